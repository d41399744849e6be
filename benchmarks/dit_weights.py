"""Do learned timestep weights help fashion-dit? Fitted on held-out train images, confirmed on test images.

  run      the full evaluation (every class at the 200 stratified timesteps, l1) of PER_CLASS held-out train images
           of every class (fashion-dit's heldout_train.json; fashion_eval.py's `heldout` records, resumable);
  fit      polynomial log-weights (timestep_weights.fit_weights) fitted on all of those records, with their
           temperature, shipped as fashion-dit's timestep_weights.json for --loss l1 (kept once written: its digest
           names the runs that use it), which its runs apply by default;
  confirm  the headline schedule of fashion_headline.py on its test images with those weights (the default) and
           with `--timestep_weights none` (records under benchmarks/cache/headline/dit_test; resumable, and a
           stopped run is reported on the images both have scored);
  report   benchmarks/results/dit_weights.json: on the held-out images, uniform against 'poly' and 'bins' weights
           fitted on one half and scored on the other, both ways (full evaluation and the anytime rule of --delta
           0.05 replayed on the same records); on test, the weighted headline run against fashion_headline.py's
           uniform one on the images both scored (images gained and lost, exact McNemar p).

    python benchmarks/dit_weights.py run --per_class 20
    python benchmarks/dit_weights.py fit
    python benchmarks/dit_weights.py confirm
"""
from __future__ import annotations

import argparse

import torch

from lib import RESULTS, HelpFormatter
from lib.fashion import LOSS, MODELS, MODELS_DIR, log_dir, run_folders, score_heldout_full, stratified_subset
from lib.headline import HEADLINE, run_folder, score
from lib.replay import cross_validated, evaluate
from lib.results import write_result
from lib.scoring import compare_runs

from diffusion_classifier.calibration import load_record_scores
from diffusion_classifier.timestep_weights import fit_temperature, fit_weights, load_full_errors
from diffusion_classifier.weighting import NO_WEIGHTS, SHIPPED_FILE

OUT = RESULTS / "dit_weights.json"
WEIGHTS = MODELS_DIR / MODELS["dit"][1] / SHIPPED_FILE


def held_out_errors():
    folder = run_folders("dit").get("heldout")
    if folder is None:
        raise SystemExit("no held-out full evaluation of fashion-dit yet: run `python benchmarks/dit_weights.py run`")
    return folder, load_full_errors(folder)


def fit() -> None:
    if WEIGHTS.is_file():  # its digest names the runs that use it: refitting starts them again
        print(f"{WEIGHTS} exists (the shipped weights); delete it to fit again")
        return
    folder, fe = held_out_errors()
    every = range(len(fe.labels))
    w = fit_weights(fe, every, "poly")
    w.temperature = fit_temperature(fe, w, every)
    w.loss = LOSS
    w.info = {**(w.info or {}), "images": len(fe.labels),
              "fitted_on": f"{len(fe.labels)} of fashion-dit's held-out train images (never trained on), every class at "
                           f"{len(fe.t)} stratified timesteps, --loss {LOSS}: python benchmarks/dit_weights.py run, fit"}
    w.save(WEIGHTS)
    print(f"poly weights fitted on {len(fe.labels)} held-out images -> {WEIGHTS}; w(t) at t = 0, 100, ..., 900: "
          f"{[round(float(v), 2) for v in w.weights[::100]]}")


def test_comparison() -> dict | None:
    uniform, weighted = run_folder("dit", "test", None), run_folder("dit", "test")
    if uniform is None or weighted is None:
        return None
    return compare_runs(("uniform", load_record_scores(uniform)), ("weighted", load_record_scores(weighted)))


def report() -> None:
    folder, fe = held_out_errors()
    base, right = evaluate(fe, None, range(len(fe.labels)))
    rows = {"uniform": base}
    for kind in ("poly", "bins"):
        row, r = cross_validated(fe, kind)
        rows[f"{kind} (2-fold cross-validated)"] = {**row, "gained": int((r & ~right).sum()), "lost": int((~r & right).sum())}
    out = {"model": "fashion-dit", "heldout_folder": folder.name, "heldout_images": len(fe.labels), "heldout": rows,
           "test": test_comparison()}
    print(f"fashion-dit, {len(fe.labels)} held-out train images (full evaluation, l1; anytime --delta 0.05 replayed)")
    for name, r in rows.items():
        print(f"  {name:28s} full {r['full_top1']:5.1f}%  anytime {r['anytime_top1']:5.1f}% at "
              f"{r['anytime_evals_per_image']:5.1f}" + (f"  (+{r['gained']} / -{r['lost']})" if "gained" in r else ""))
    t = out["test"]
    if t:
        u, w = t["uniform"], t["weighted"]
        print(f"test, headline schedule, {t['images']} images: uniform {u['top1']:.1f}% at "
              f"{u['evaluations_per_image']:.0f}, poly weights {w['top1']:.1f}% at {w['evaluations_per_image']:.0f} "
              f"({t['gained']} gained, {t['lost']} lost, p = {t['mcnemar_p']:.3g})")
    write_result(OUT, out, "benchmarks/dit_weights.py")
    print(f"wrote {OUT}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("action", choices=["run", "fit", "confirm", "report"])
    p.add_argument("--per_class", type=int, default=20, help="run: held-out train images per class")
    p.add_argument("--test_per_class", type=int, default=100, help="confirm: test images per class (the headline's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the runs")
    p.add_argument("--threads", type=int, default=2, help="run: CPU threads")
    args = p.parse_args(argv)
    if args.action == "run":
        torch.set_num_threads(args.threads)
        score_heldout_full("dit", args.per_class, args.seed, log_dir("dit", "heldout"))
    elif args.action == "fit":
        fit()
    elif args.action == "confirm":
        if not WEIGHTS.is_file():
            raise SystemExit(f"no {WEIGHTS}: run `python benchmarks/dit_weights.py fit` first")
        subset = stratified_subset(args.test_per_class)
        score("dit", "test", HEADLINE + ["--timestep_weights", NO_WEIGHTS], "test", subset, args.seed)
        score("dit", "test", HEADLINE, "test", subset, args.seed)
    if args.action != "fit":
        report()


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
