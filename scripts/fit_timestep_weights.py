"""Fit timestep weights and a temperature on the records of a full evaluation, and save them.

RUN_FOLDER holds one record per labelled image in which every candidate was scored at the same
timesteps (e.g. eval_prob_adaptive.py --to_keep 1 --n_samples 100, or --schedule statistical
--n_samples 200 --min_samples 200, or eval_prob_dit.py --to_keep 1 --n_samples N). The images are
split into a fit part and a held-out part; per-bin and polynomial weights (positive) are fit by
cross-entropy on the fit part; the held-out part gives each one's accuracy against uniform weights
and the temperature (negative log-likelihood), with the expected calibration error before and after.

The file keeps the weights of the best held-out accuracy (uniform when nothing beats it, --kind to
force one) and their temperature; pass it to eval_prob_adaptive.py / eval_prob_dit.py or
scripts/print_acc.py with --timestep_weights FILE.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_classifier.cli import HelpFormatter, non_negative_float, positive_int, probability, seed_int  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.errors import InputError  # noqa: E402
from diffusion_classifier.records import check_output_file  # noqa: E402
from diffusion_classifier.timestep_weights import fit_and_report, load_full_errors  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("run_folder", type=Path, help="run folder of a full evaluation (every candidate at every timestep)")
    p.add_argument("--out", type=Path, default=None, help="weights JSON; not given: RUN_FOLDER/timestep_weights.json")
    p.add_argument("--holdout", type=probability, default=0.5, help="fraction of the images held out, in (0, 1)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the fit / held-out split")
    p.add_argument("--n_bins", type=positive_int, default=10, help="bins of the per-bin weights")
    p.add_argument("--degree", type=positive_int, default=3, help="degree of the polynomial log-weights")
    p.add_argument("--l2", type=non_negative_float, default=1e-2, help="L2 penalty on the log-weight parameters")
    p.add_argument("--kind", default="auto", choices=["auto", "uniform", "poly", "bins"],
                   help="weights to save: auto = best held-out accuracy, ties to the simpler")
    p.add_argument("--T", type=positive_int, default=1000, help="training timesteps of the model")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)  # each flag's range is checked here
    out = args.out or args.run_folder / "timestep_weights.json"
    if args.out is not None:
        check_output_file(args.out)  # before the fit
    fe = load_full_errors(args.run_folder)
    if int(fe.t.max()) >= args.T:
        raise InputError(f"records hold timestep {int(fe.t.max())}, beyond --T {args.T}")
    if args.out is None:
        check_output_file(out, "the default --out")  # RUN_FOLDER exists now: a folder in the way fails before the fit
    weights, report = fit_and_report(fe, args.T, args.holdout, args.seed, args.n_bins, args.degree, args.l2, args.kind)
    weights.info = {**weights.info, "run_folder": str(args.run_folder)}
    weights.save(out)
    print(f"{args.run_folder}: {len(fe.labels)} images x {fe.errors.shape[1]} candidates x {len(fe.t)} samples; "
          f"fit on {report['n_fit']}, held out {report['n_heldout']}")
    print("  weights   held-out top-1   change   temperature   NLL before -> after   ECE% before -> after")
    uni = report["kinds"]["uniform"]["heldout_top1"]
    for k, r in report["kinds"].items():
        print(f"  {k:8s} {r['heldout_top1']:14.2f}% {r['heldout_top1'] - uni:+8.2f} {r['temperature']:13.4g}"
              f"   {r['heldout_nll_before']:7.3f} -> {r['heldout_nll_after']:.3f}"
              f"   {r['heldout_ece_before']:8.2f} -> {r['heldout_ece_after']:.2f}")
    print(f"  saved {report['chosen']} weights (temperature {weights.temperature:.4g}) to {out}")
    return {"out": str(out), **report}


if __name__ == "__main__":
    run_cli(main)
