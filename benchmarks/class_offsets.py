"""Is a Fashion-MNIST model's miscalibration its temperature or a bias between its classes, and do class offsets
applied inside the schedule mend it?

A temperature rescales every image's scores alike. If a model's prompts (or class embeddings) make denoising easier
for some classes whatever the image, no temperature corrects it: those classes get too much probability everywhere.

Action `posthoc` (the default) fits, on each model's held-out train records of the headline schedule
(fashion_headline.py run / calibrate), the temperature alone and the temperature with one log-prior per class
(calibration.fit_calibration, offsets=True), and compares them on the records as they are:

  1. on the held-out images only: fitted on one half (every other image of each class), scored on the other; this is
     where the choice is made;
  2. on the test records (the whole split where fashion_headline.py whole has run, and the 1,000 stratified images):
     NLL and ECE with bootstrap intervals, and the top-1 of the calibrated probabilities beside the records' own.

It reads the records only (no denoiser evaluation). Results in benchmarks/results/class_offsets.json and a reliability
diagram per model and fit in class_offsets.png.

Action `schedule` ships the offsets and measures them where they act, inside the schedule
(diffusion_classifier.class_offsets.ClassOffsets: each class's errors shifted by -τ·b before every decision, so the
answer is the most probable class):

  1. the headline schedule without offsets on PER_CLASS held-out train images of every class (resumes), and
     scripts/calibrate.py --class_offsets --offsets_only on those records: the offsets go into the model folder's
     calibration.json beside the shipped temperature, which is kept;
  2. the headline schedule on the PER_CLASS x 10 stratified test images twice, with the shipped offsets (the
     command's default now) and with --class_offsets none, and the two compared image by image: top-1, evaluations
     per image, images lost and gained, NLL and ECE with bootstrap intervals (each run at its own temperature).

Results in benchmarks/results/class_offsets_schedule.json and class_offsets_schedule.png, and a paragraph in each
model's card. About 10 minutes per 1,000 images per run on a 2-core CPU.

Action `whole` runs the headline schedule with the shipped offsets on the whole test split (resumes; the stratified
images are reused) and adds its top-1, cost, NLL, ECE and per-class top-1 to class_offsets_schedule.json, beside
the figures fashion_headline.py whole measured without them.

    python benchmarks/fashion_headline.py run --models sd dit flow   # the records `posthoc` reads, if not there yet
    python benchmarks/class_offsets.py posthoc --models sd dit flow
    python benchmarks/class_offsets.py schedule --models dit flow --per_class 100
    python benchmarks/class_offsets.py whole --models flow
"""
from __future__ import annotations

import argparse
import json

from lib import RESULTS, HelpFormatter, entry_script
from lib.fashion import MODELS, heldout_subset, stratified_subset
from lib.headline import HEADLINE, OFFSETS_RESULT, card_with_offsets, run_folder, score
from lib.results import write_result
from lib.scoring import compare_runs

from diffusion_classifier.calibration import (RecordScores, fit_calibration, load_record_scores, plot_reliability,
                                              run_temperature, summary)
from diffusion_classifier.data.fashion_mnist import CLASSNAMES
from diffusion_classifier.records import read_manifest_settings

OUT = RESULTS / "class_offsets.json"
SCHEDULE_OUT = RESULTS / OFFSETS_RESULT
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


def posthoc(models, n_boot: int, argv) -> dict:
    rows, panels = {}, {}
    for m in models:
        rows[m], more = measure(m, n_boot)
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


def ship_offsets(model: str, per_class: int, seed: int) -> dict:
    """The headline schedule without offsets on per_class held-out train images of every class, then the class offsets
    fitted on those records and written beside the model's shipped temperature (which is kept)."""
    picks, unseen = heldout_subset(model, per_class)
    if not unseen:
        raise SystemExit(f"{model}: the model has no held-out train images (heldout_train.json) to fit offsets on")
    score(model, "heldout", HEADLINE, "train", picks, seed)
    held = run_folder(model, "heldout")
    out = entry_script("scripts/calibrate").main([str(held), "--class_offsets", "--offsets_only", "--n_boot", "200"])
    return {"heldout_images": len(picks), "heldout_folder": held.name, "temperature": out["temperature"],
            "offsets_temperature": out["class_offsets"]["temperature"],
            "offsets": dict(zip(CLASSNAMES, [round(b, 4) for b in out["class_offsets"]["offsets"]]))}


def in_schedule(model: str, per_class: int, seed: int, n_boot: int) -> tuple[dict, dict]:
    """The headline schedule with the shipped offsets and without them on the same stratified test images."""
    subset = stratified_subset(per_class)
    for offsets in (False, True):
        score(model, "test", HEADLINE, "test", subset, seed, offsets=offsets)
    runs = {name: run_folder(model, "test", offsets=offsets) for name, offsets in (("plain", False), ("offsets", True))}
    scores = {name: load_record_scores(folder).select(subset) for name, folder in runs.items()}
    row = compare_runs(("plain", scores["plain"]), ("offsets", scores["offsets"]))
    panels = {}
    for name, folder in runs.items():
        tau, source = run_temperature(folder, digest=read_manifest_settings(folder).get("timestep_weights"))
        s = summary(scores[name], tau, n_boot)
        row[name].update({k: s[k] for k in ("temperature", "nll", "nll_interval", "ece", "ece_interval")},
                         temperature_source=source, folder=folder.name)
        panels[f"fashion-{model}, {'with class offsets' if name == 'offsets' else 'errors alone'} (τ {tau:.3g})"] = s
    return row, panels


def schedule(models, per_class: int, heldout_per_class: int, seed: int, n_boot: int, argv) -> dict:
    rows, panels = {}, {}
    for m in models:
        fit = ship_offsets(m, heldout_per_class, seed)
        print(f"fashion-{m}: offsets fitted on {fit['heldout_images']} held-out images (τ {fit['offsets_temperature']:.4g}"
              f"; shipped temperature {fit['temperature']:.4g} kept): "
              + ", ".join(f"{k} {v:+.2f}" for k, v in fit["offsets"].items()), flush=True)
        row, more = in_schedule(m, per_class, seed, n_boot)
        rows[m] = with_earlier(m, fit=fit, test_stratified=row)
        panels.update(more)
        for name in ("plain", "offsets"):
            r = row[name]
            print(f"  {row['images']} stratified test images, {'with offsets' if name == 'offsets' else 'errors alone'}:"
                  f" top-1 {r['top1']:.2f}%, {r['evaluations_per_image']:.1f} evaluations / image, ECE {r['ece']:.2f}% "
                  f"[{r['ece_interval'][0]:.2f}, {r['ece_interval'][1]:.2f}], NLL {r['nll']:.4f}", flush=True)
        print(f"  with offsets: {row['gained']} gained, {row['lost']} lost (McNemar p {row['mcnemar_p']:.3f})")
    write_result(SCHEDULE_OUT, rows, __file__, argv, merge=True)
    for m in models:
        card_with_offsets(m)  # the model card's paragraph on the offsets it ships
    plot_reliability(RESULTS / "class_offsets_schedule.png", panels,
                     "Fashion-MNIST stratified test images: class offsets inside the schedule, and without them")
    print(f"wrote {SCHEDULE_OUT} and {RESULTS / 'class_offsets_schedule.png'}")
    return rows


def with_earlier(model: str, **parts) -> dict:
    """The model's row of class_offsets_schedule.json with `parts` replaced (the actions write different parts)."""
    earlier = json.loads(SCHEDULE_OUT.read_text()).get(model, {}) if SCHEDULE_OUT.is_file() else {}
    return {**earlier, **parts}


def whole(models, seed: int, n_boot: int, argv) -> dict:
    """The headline schedule with the shipped offsets on the whole test split (the stratified images are reused)."""
    from diffusion_classifier.records import accuracy_summary

    rows = {}
    for m in models:
        score(m, "test", HEADLINE, "test", None, seed, offsets=True)
        folder = run_folder(m, "test", offsets=True)
        if folder is None:
            raise SystemExit(f"fashion-{m} ships no class offsets: run `class_offsets.py schedule --models {m}` first")
        rs = load_record_scores(folder)
        tau, _ = run_temperature(folder)
        s = summary(rs, tau, n_boot)
        per_class = accuracy_summary(rs.preds.tolist(), rs.labels.tolist())["per_class"]
        rows[m] = with_earlier(m, whole_test_split={
            **{k: s[k] for k in ("n", "top1", "evaluations_per_image", "nll", "nll_interval", "ece", "ece_interval",
                                 "temperature")},
            "per_class_top1": list(per_class.values()), "folder": folder.name})
        w = rows[m]["whole_test_split"]
        print(f"fashion-{m} with its class offsets, {w['n']} test images: top-1 {w['top1']:.2f}% at "
              f"{w['evaluations_per_image']:.1f} evaluations / image, ECE {w['ece']:.2f}% [{w['ece_interval'][0]:.2f}, "
              f"{w['ece_interval'][1]:.2f}], NLL {w['nll']:.4f}; per class "
              + ", ".join(f"{a:.1f}" for a in w["per_class_top1"]), flush=True)
    write_result(SCHEDULE_OUT, rows, __file__, argv, merge=True)
    for m in models:
        card_with_offsets(m)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("action", nargs="?", default="posthoc", choices=["posthoc", "schedule", "whole"])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--per_class", type=int, default=100, help="schedule: stratified test images per class")
    p.add_argument("--heldout_per_class", type=int, default=100, help="schedule: held-out train images per class to fit on")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the runs")
    p.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples of NLL and ECE")
    args = p.parse_args(argv)
    if args.action == "schedule":
        return schedule(args.models, args.per_class, args.heldout_per_class, args.seed, args.n_boot, argv)
    if args.action == "whole":
        return whole(args.models, args.seed, args.n_boot, argv)
    return posthoc(args.models, args.n_boot, argv)


if __name__ == "__main__":
    main()
