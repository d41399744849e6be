"""The paper's CIFAR-10 protocol on Fashion-MNIST, with the shipped fashion models: resumable records, then a report.

`run` scores a seeded stratified subset of the test split with each model through the toolkit's own scripts
(eval_prob_adaptive.py for fashion-sd / fashion-flow, eval_prob_dit.py's adaptive mode for fashion-dit),
one record per image in benchmarks/cache/fashion/<model>/..., so a stopped run resumes where it stopped:
  - the reference's CIFAR-10 schedule, `--to_keep 5 1 --n_samples 50 500 --loss l1` (2,750 evaluations per image);
  - a full evaluation: every class at the 200 stratified timesteps (noise row k at the k-th), from which every
    statistical schedule (--z, --delta with iid or stratified variance) replays exactly (statistical.Replay).
  - `heldout`: the same full evaluation on labelled images of the *train* split (20 per class): the images a
    model held out from training (its heldout_train.json, `train_tiny_models.py --holdout`), else a seeded
    stratified choice of train images, marked as seen in training. Timestep weights, a temperature and the
    indifference zone of the sharper schedule are fitted there, never on test;
  - `flow_variants` (flow models): the full evaluation again with the velocity compared with ε - x0
    (--error_space native) and on evenly spaced σ (--flow_grid uniform_sigma), beside the default (ε̂ = x_t +
    (1-σ)v̂ against ε, the training timesteps' σ; benchmarks/flow_scoring.py compares every flow variant).
`report` reads the records, replays the schedules (the anytime rule with even and decaying spending of delta,
with and without the indifference zone), applies the held-out fits to the test records and writes
benchmarks/results/fashion_schedules.{json,png}, fashion_heldout_fits.json and, when fashion-sd's whole-split
runs are in benchmarks/cache/fashion/sd_whole, fashion_test_split.json. Records: lib/fashion.py.

    OMP_NUM_THREADS=1 nohup python benchmarks/fashion_eval.py run --models sd --per_class 10 &
    python benchmarks/fashion_eval.py run --models sd dit flow --schedules heldout --heldout_per_class 10
    python benchmarks/fashion_eval.py report
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lib import RESULTS, HelpFormatter, entry_script
from lib.fashion import (CACHE, FLOW_VARIANTS, FULL, MODELS, MODELS_DIR, N_FULL, common_flags, folder_stats, heldout_subset, log_dir,
                         report_whole, run_folders, stratified_subset)
from lib.replay import replay, schedules  # the same 200-timestep full evaluation and replays as digits_c
from lib.results import write_result

from diffusion_classifier.calibration import expected_calibration_error, nll
from diffusion_classifier.schedules.statistical import statistical_classify
from diffusion_classifier.timestep_weights import (fit_and_report, fit_temperature, load_full_errors, predictions,
                                                   probabilities)
from diffusion_classifier.weighting import TimestepWeights
from diffusion_classifier.training.common import HELDOUT_FILE  # written by scripts/train_tiny_models.py --holdout

REFERENCE = ["--to_keep", "5", "1", "--n_samples", "50", "500"]
EPSILONS = (0.0025, 0.005, 0.01, 0.02)  # the indifference zones tried on the held-out train images


def run(models, per_class: int, which, seed: int, heldout_per_class: int = 20) -> None:
    """Compute (or resume) the records of every model and schedule asked for."""
    CACHE.mkdir(parents=True, exist_ok=True)
    subset = CACHE / f"subset_test_{per_class}.npy"
    np.save(subset, np.array(stratified_subset(per_class)))
    for m in models:
        entry, folder = MODELS[m]
        path = MODELS_DIR / folder
        if not path.is_dir():
            print(f"{m}: {path} is not trained yet; skipped", flush=True)
            continue
        common = common_flags(m, seed)
        test = common + ["--split", "test", "--subset_path", str(subset), "--log_dir", str(log_dir(m))]
        jobs = [(name, test + flags) for name, flags in (("reference", REFERENCE), ("full", FULL)) if name in which]
        if "flow_variants" in which and m == "flow":
            jobs += [(f"full {v}", test + FULL + flags) for v, (flags, _) in FLOW_VARIANTS.items()]
        if "heldout" in which:
            idx, unseen = heldout_subset(m, heldout_per_class)
            held = CACHE / f"heldout_{m}_{heldout_per_class}.npy"
            np.save(held, np.array(idx))
            jobs.append(("heldout" if unseen else "heldout (seen in training)",
                         common + ["--split", "train", "--subset_path", str(held), "--log_dir", str(log_dir(m, "heldout"))]
                         + FULL))
        for name, flags in jobs:
            out = entry_script(entry).main(flags)
            print(f"{m} {name}: {out['folder']} ({out['done']} scored now, {out['skipped']} already done)", flush=True)


def anytime(delta: float, min_samples: int, variance: str, spending: str = "even", epsilon: float | None = None):
    """classify(ev, n, k, w) of the anytime rule with these settings, on the full evaluation's grid."""
    return lambda ev, n, k, w: statistical_classify(ev, n, k, N_FULL, delta=delta, min_samples=min_samples, weights=w,
                                                    variance=variance, spending=spending, epsilon=epsilon)


def full_evaluation(ev, n, k, w):
    """Every candidate at every timestep of the full evaluation's grid (weighted by w when given)."""
    return statistical_classify(ev, n, k, N_FULL, min_samples=N_FULL, weights=w)


def rule_name(delta: float, variance: str, spending: str, epsilon: float | None = None) -> str:
    return (f"anytime delta={delta:g} (min {{m}}, {variance})" if spending == "even" else
            f"anytime delta={delta:g} decaying{'' if epsilon is None else f' eps={epsilon:g}'} (min {{m}}, {variance})")


def choose_epsilon(fe, delta: float, min_samples: int, variance: str, tolerance: float = 0.5) -> tuple[float | None, list]:
    """The widest indifference zone of EPSILONS whose replay on the held-out records fe keeps the accuracy of the
    decaying rule without one within `tolerance` points (None when none does), and every zone's row."""
    idx = range(len(fe.labels))
    base = replay(fe, anytime(delta, min_samples, variance, "decaying"), idx)
    rows, chosen = [{"epsilon": None, **base}], None
    for eps in EPSILONS:
        r = replay(fe, anytime(delta, min_samples, variance, "decaying", eps), idx)
        rows.append({"epsilon": eps, **r})
        if r["accuracy"] >= base["accuracy"] - tolerance:
            chosen = eps
    return chosen, rows


def calibration(held, test) -> tuple[dict, torch.Tensor | None]:
    """(report, the weights kept or None for uniform): timestep weights (chosen on the held-out records as fit_and_report chooses them) and temperatures fitted on
    the held-out train records `held`, applied to the test records: accuracy, NLL and ECE before and after."""
    chosen, rep = fit_and_report(held, T=1000, holdout=0.5, seed=0)
    out = {"heldout_images": len(held.labels), "test_images": len(test.labels), "weights_chosen": rep["chosen"],
           "weights_report": rep}
    y = test.labels
    for name, w in (("uniform", None), ("weights", chosen.weights if rep["chosen"] != "uniform" else None)):
        tw = None if w is None else TimestepWeights(w)
        tau = fit_temperature(held, tw, range(len(held.labels)))
        p1, pt = probabilities(test, tw, 1.0), probabilities(test, tw, tau)
        gen = torch.Generator().manual_seed(0)
        boot = sorted(expected_calibration_error(pt[i], y[i])
                      for i in (torch.randint(len(y), (len(y),), generator=gen) for _ in range(1000)))
        out[name] = {"temperature": tau, "test_top1": 100.0 * float((predictions(test, tw) == y).double().mean()),
                     "test_ece_before": expected_calibration_error(p1, y), "test_ece_after": expected_calibration_error(pt, y),
                     "test_ece_after_bootstrap_95": [boot[25], boot[974]],
                     "test_nll_before": nll(p1, y), "test_nll_after": nll(pt, y),
                     "weights": None if w is None else [float(v) for v in w[::50]]}
    return out, (chosen.weights if rep["chosen"] != "uniform" else None)


def report(models, deltas, zs, min_samples: int) -> tuple[dict, dict]:
    """({model: schedule rows}, {model: held-out fits and the sharper rule's choice})."""
    out, fits = {}, {}
    for m in models:
        folders = run_folders(m)
        rows, fit = [], {}
        if "reference" in folders:
            ref = folder_stats(folders["reference"])
            rows.append({"schedule": "reference keep 5 1 / samples 50 500 (real run)", "accuracy": ref["accuracy"],
                         "evals_per_image": ref["evals_per_image"], "n_images": ref["n_images"]})
        held = load_full_errors(folders["heldout"]) if "heldout" in folders else None
        if held is not None:
            fit["heldout_folder"] = folders["heldout"].name
            fit["heldout_unseen"] = (MODELS_DIR / MODELS[m][1] / HELDOUT_FILE).is_file()
        if "full" in folders:
            fe = load_full_errors(folders["full"])
            idx = range(len(fe.labels))
            for name, kind, classify in schedules(deltas, zs, min_samples):
                if kind != "reference":  # the staged schedules ran for real above
                    rows.append({"schedule": name + " (exact replay)", **replay(fe, classify, idx)})
            weights = None
            if held is not None:
                fit["calibration"], weights = calibration(held, fe)
            for variance in ("iid", "stratified"):
                for d in deltas:
                    rows.append({"schedule": rule_name(d, variance, "decaying").format(m=min_samples) + " (exact replay)",
                                 **replay(fe, anytime(d, min_samples, variance, "decaying"), idx)})
                if held is None:
                    continue
                eps, tried = choose_epsilon(held, deltas[0], min_samples, variance)
                fit[f"epsilon_{variance}"] = {"chosen": eps, "delta": deltas[0], "heldout_rows": tried}
                if eps is not None:
                    name = rule_name(deltas[0], variance, "decaying", eps).format(m=min_samples)
                    rows.append({"schedule": name + " (exact replay)",
                                 **replay(fe, anytime(deltas[0], min_samples, variance, "decaying", eps), idx)})
                    if weights is not None:
                        rows.append({"schedule": name + ", held-out timestep weights (exact replay)",
                                     **replay(fe, anytime(deltas[0], min_samples, variance, "decaying", eps), idx,
                                              weights)})
            if weights is not None:
                rows.append({"schedule": "full, held-out timestep weights (exact replay)",
                             **replay(fe, full_evaluation, idx, weights)})
        for v in FLOW_VARIANTS:
            if f"full {v}" in folders:
                fv = load_full_errors(folders[f"full {v}"])
                label = {"velocity": "velocity v̂ vs ε - x0", "uniform_sigma": "evenly spaced σ"}[v]
                rows.append({"schedule": f"full, {label} (exact replay)",
                             **replay(fv, full_evaluation, range(len(fv.labels)))})
                rows.append({"schedule": f"anytime delta={deltas[0]:g} (min {min_samples}, stratified), {label} (exact replay)",
                             **replay(fv, anytime(deltas[0], min_samples, "stratified"), range(len(fv.labels)))})
        if rows:
            out[MODELS[m][1]] = rows
        if fit:
            fits[MODELS[m][1]] = fit
    return out, fits


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, rows in results.items():
        xs = [r["evals_per_image"] for r in rows]
        ys = [r["accuracy"] for r in rows]
        ax.scatter(xs, ys, label=model)
        for r in rows:
            if r["schedule"].startswith(("reference", "full")):
                ax.annotate(r["schedule"].split(" (")[0].split(":")[0], (r["evals_per_image"], r["accuracy"]),
                            fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("denoiser evaluations per image")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Fashion-MNIST test subset: accuracy against cost")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("command", choices=["run", "report"], help="compute records, or report on them")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to use")
    p.add_argument("--per_class", type=int, default=100, help="run: test images per class in the stratified subset")
    p.add_argument("--schedules", nargs="+", default=["reference", "full"],
                   choices=["reference", "full", "heldout", "flow_variants"], help="run: which records to compute")
    p.add_argument("--heldout_per_class", type=int, default=20, help="run: held-out train images per class")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--seed", type=int, default=0, help="run: noise seed")
    p.add_argument("--deltas", type=float, nargs="+", default=[0.05, 0.1], help="report: anytime schedules' delta")
    p.add_argument("--z", type=float, nargs="+", default=[2.0, 3.0], help="report: fixed-z schedules")
    p.add_argument("--min_samples", type=int, default=10, help="report: timesteps before the first pruning")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "run":
        run(args.models, args.per_class, args.schedules, args.seed, args.heldout_per_class)
        return
    results, fits = report(args.models, args.deltas, args.z, args.min_samples)
    write_result(RESULTS / "fashion_schedules.json", results, __file__, argv)
    write_result(RESULTS / "fashion_heldout_fits.json", fits, __file__, argv)
    whole = report_whole()
    if whole:
        write_result(RESULTS / "fashion_test_split.json", whole, __file__, argv)
        for name, parts in whole.items():
            for part, r in parts.items():
                print(f"{name} [{part}]: {r['accuracy']:.2f}% over {r['n_images']} images at "
                      f"{r['evals_per_image']:.0f} evaluations per image")
    plot(results, RESULTS / "fashion_schedules.png")
    for model, rows in results.items():
        ref = next((r for r in rows if r["schedule"].startswith("reference")), None)
        print(f"\n{model}\n| schedule | top-1 (%) | evaluations per image | fewer than the reference | images |"
              f"\n|---|---:|---:|---:|---:|")
        for r in rows:
            fewer = f"{ref['evals_per_image'] / r['evals_per_image']:.1f}x" if ref else ""
            print(f"| {r['schedule']} | {r['accuracy']:.2f} | {r['evals_per_image']:.0f} | {fewer} | {r['n_images']} |")
    for model, fit in fits.items():
        cal = fit.get("calibration")
        if cal:
            print(f"\n{model}: fitted on {cal['heldout_images']} train images "
                  f"({'held out from training' if fit['heldout_unseen'] else 'seen in training'}), applied to "
                  f"{cal['test_images']} test images; weights chosen: {cal['weights_chosen']}")
            for name in ("uniform", "weights"):
                c = cal[name]
                lo, hi = c["test_ece_after_bootstrap_95"]
                print(f"  {name}: top-1 {c['test_top1']:.2f}%, temperature {c['temperature']:.4g}, ECE "
                      f"{c['test_ece_before']:.2f}% -> {c['test_ece_after']:.2f}% (bootstrap 95%: {lo:.1f}-{hi:.1f}), NLL {c['test_nll_before']:.3f} -> "
                      f"{c['test_nll_after']:.3f}")
        for variance in ("iid", "stratified"):
            if f"epsilon_{variance}" in fit:
                e = fit[f"epsilon_{variance}"]
                print(f"  indifference zone ({variance}), chosen on the held-out records: {e['chosen']}; "
                      + ", ".join(f"eps {r['epsilon']}: {r['accuracy']:.1f}% @ {r['evals_per_image']:.0f}"
                                  for r in e["heldout_rows"]))


if __name__ == "__main__":
    main()
