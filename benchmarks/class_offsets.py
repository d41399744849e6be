"""Is a Fashion-MNIST model's miscalibration its temperature or a bias between its classes?

A temperature rescales every image's scores alike. If a model's prompts (or class embeddings) make denoising easier
for some classes whatever the image, no temperature corrects it: those classes get too much probability everywhere.
This benchmark fits, on each model's held-out train records of the headline schedule (fashion_headline.py run /
calibrate), the temperature alone and the temperature with one log-prior per class (calibration.fit_calibration,
offsets=True), and compares them:

  1. on the held-out images only: fitted on one half (every other image of each class), scored on the other; this is
     where the choice is made;
  2. on the test records (the whole split where fashion_headline.py whole has run, and the 1,000 stratified images):
     NLL and ECE with bootstrap intervals, and the top-1 of the calibrated probabilities beside the records' own.

It reads the records only (no denoiser evaluation): a few minutes to load them. Results in
benchmarks/results/class_offsets.json and a reliability diagram per model and fit in class_offsets.png.

    python benchmarks/fashion_headline.py run --models sd dit flow   # the records it reads, if not there yet
    python benchmarks/class_offsets.py --models sd dit flow
"""
from __future__ import annotations

import argparse

from lib import RESULTS, HelpFormatter
from lib.fashion import MODELS, stratified_subset
from lib.headline import run_folder
from lib.results import write_result

from diffusion_classifier.calibration import RecordScores, fit_calibration, load_record_scores, plot_reliability, summary
from diffusion_classifier.data.fashion_mnist import CLASSNAMES

OUT = RESULTS / "class_offsets.json"
FITS = {"temperature": False, "temperature and class offsets": True}


def split_halves(rs: RecordScores) -> tuple[RecordScores, RecordScores]:
    """Every other record of each class in one half, the rest in the other (the order of their indices)."""
    first, second = [], []
    for c in sorted(set(rs.labels.tolist())):
        idx = [i for i, y in zip(rs.indices, rs.labels.tolist()) if y == c]
        first += idx[0::2]
        second += idx[1::2]
    return rs.select(sorted(first)), rs.select(sorted(second))


def scored(rs: RecordScores, tau: float, offsets, n_boot: int) -> dict:
    out = summary(rs, tau, n_boot, offsets=offsets)
    out["top1_of_probabilities"] = 100.0 * float((rs.probabilities(tau, offsets).argmax(1) == rs.labels).double().mean())
    return out


def measure(model: str, n_boot: int) -> tuple[dict, dict]:
    held_folder, test_folder = run_folder(model, "heldout"), run_folder(model, "test")
    if held_folder is None or test_folder is None:
        raise SystemExit(f"{model}: no held-out or test records of the headline schedule; run "
                         f"`python benchmarks/fashion_headline.py run --models {model}` first")
    held, test = load_record_scores(held_folder), load_record_scores(test_folder)
    sets = {"test, 1,000 stratified": test.select(stratified_subset(100))}
    if len(test.indices) == 10000:
        sets["test, whole split"] = test
    a, b = split_halves(held)
    row, panels = {"heldout_images": len(held.labels), "folders": {"heldout": held_folder.name, "test": test_folder.name}}, {}
    for name, with_offsets in FITS.items():
        tau_a, off_a = fit_calibration(a.scores, a.labels, a.candidate_class, offsets=with_offsets)
        tau, off = fit_calibration(held.scores, held.labels, held.candidate_class, offsets=with_offsets)
        fit = {"heldout_half": {k: v for k, v in scored(b, tau_a, off_a, n_boot).items() if k != "reliability"},
               "temperature": tau}
        if off is not None:
            fit["offsets"] = dict(zip(CLASSNAMES, [round(float(x), 4) for x in off]))
        for label, rs in sets.items():
            fit[label] = scored(rs, tau, off, n_boot)
        row[name] = fit
        last = list(sets)[-1]
        panels[f"fashion-{model}, {last}: {name}"] = fit[last]
    return row, panels


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples of NLL and ECE")
    args = p.parse_args(argv)
    rows, panels = {}, {}
    for m in args.models:
        rows[m], more = measure(m, args.n_boot)
        panels.update(more)
        for name in FITS:
            f = rows[m][name]
            parts = [f"held-out half ECE {f['heldout_half']['ece']:.2f}% NLL {f['heldout_half']['nll']:.4f}"]
            parts += [f"{k}: ECE {v['ece']:.2f}% [{v['ece_interval'][0]:.2f}, {v['ece_interval'][1]:.2f}] NLL "
                      f"{v['nll']:.4f} top-1 {v['top1_of_probabilities']:.2f}% (records {v['top1']:.2f}%)"
                      for k, v in f.items() if k.startswith("test")]
            print(f"fashion-{m}, {name} (τ {f['temperature']:.4g}): " + "; ".join(parts), flush=True)
        if "offsets" in rows[m]["temperature and class offsets"]:
            print("  offsets: " + ", ".join(f"{k} {v:+.2f}" for k, v in rows[m]["temperature and class offsets"]["offsets"].items()))
    write_result(OUT, rows, __file__, argv, merge=True)
    plot_reliability(RESULTS / "class_offsets.png", panels,
                     "Fashion-MNIST test images: the temperature alone, and with one log-prior per class")
    print(f"wrote {OUT} and {RESULTS / 'class_offsets.png'}")
    return rows


if __name__ == "__main__":
    main()
