"""Each Fashion-MNIST model at the headline schedule: accuracy and cost on test images, its temperature fitted on
held-out train images and shipped beside it, calibration, and the saving against the reference's command.

The headline schedule is the reference's CIFAR-10 command (`--to_keep 5 1 --n_samples 50 500 --loss l1`) with only
`--schedule statistical --delta 0.05` added: at most 500 timesteps per class, the default rule of --delta, deciding
on the errors alone (`--class_offsets none`: class_offsets.py measures the offsets some models ship). Every
action resumes (one record per image under benchmarks/cache/headline/<model>_<part>/):
  run        PER_CLASS held-out train images of every class (the model's heldout_train.json, from
             `train_tiny_models.py --holdout`; else a seeded stratified choice of train images, marked as seen) and
             PER_CLASS stratified test images of every class (seed 0); then the temperature is fitted on the
             held-out records (scripts/calibrate.py) and written into the model folder's calibration.json, where
             DiffusionClassifier and print_acc.py --probs find it;
  calibrate  the held-out half of `run` only: PER_CLASS held-out train images of every class (a larger PER_CLASS
             adds images to the same records), then the temperature fitted on all of them (and, for the models in
             OFFSETS, the class offsets with it: scripts/calibrate.py --class_offsets);
  test       the headline schedule on the PER_CLASS test images only (no held-out images, no calibration);
  reference  the reference's command itself on REFERENCE_PER_CLASS test images of every class (a subset of the
             run's test images: the same seeded permutations), for the saving and the images lost;
  whole      the headline schedule on the rest of the test split (the run's records are reused);
  report     (after every action, for the models it names) their rows of benchmarks/results/fashion_headline.json
             (the other models' rows are kept): the test top-1 and evaluations per image, NLL and ECE with bootstrap
             intervals before (the uncalibrated temperature) and after, the reliability diagram, the comparison with
             the reference's command, and the whole split when it is complete; fashion_calibration.png is drawn
             from every row of the file, so a model whose records are gone keeps its panel.

    python benchmarks/fashion_headline.py run --models dit --per_class 100
    python benchmarks/fashion_headline.py calibrate --models dit --per_class 300
    python benchmarks/fashion_headline.py test --models sd --per_class 10
    python benchmarks/fashion_headline.py reference --models sd --reference_per_class 10
    python benchmarks/fashion_headline.py whole --models sd
    python benchmarks/fashion_headline.py report
"""
from __future__ import annotations

import argparse
import json

from lib import RESULTS, ROOT, HelpFormatter, entry_script
from lib.fashion import LOSS, MODELS, MODELS_DIR, heldout_picks, stratified_subset
from lib.headline import HEADLINE, REFERENCE, offsets_paragraph, run_folder, score, write_measured
from lib.results import write_result
from lib.scoring import compare_runs

from diffusion_classifier.calibration import (UNCALIBRATED_TEMPERATURE, RecordScores, load_record_scores,
                                              plot_reliability, shipped_temperature, summary)
from diffusion_classifier.records import accuracy_summary, read_manifest_settings
from diffusion_classifier.training.common import HELDOUT_FILE

OUT = RESULTS / "fashion_headline.json"
SPACES = {"eps": "ε-space (ε̂ = x_t + (1-σ)v̂ against ε, the flow default)",
          "native": "velocity space (v̂ against ε - x0, `--error_space native`)"}  # flow models' error spaces
TEST_SIZE = 10_000
OFFSETS = ("dit", "flow")  # the models that ship class offsets beside their temperature (class_offsets.py schedule)


def calibrate(model: str, per_class: int, seed: int) -> None:
    """The headline schedule on per_class held-out train images of every class, then its temperature fitted on all
    the held-out records and written into the model folder's calibration.json."""
    held, unseen = heldout_picks(MODELS[model][1], per_class)
    if not unseen:
        print(f"{model}: no heldout_train.json; fitting on train images it was trained on", flush=True)
    score(model, "heldout", HEADLINE, "train", held.tolist(), seed)
    offsets = ["--class_offsets"] if model in OFFSETS else []
    entry_script("scripts/calibrate").main([str(run_folder(model, "heldout")), *offsets])


def run(models, per_class: int, seed: int) -> None:
    for m in models:
        score(m, "test", HEADLINE, "test", stratified_subset(per_class), seed)
        calibrate(m, per_class, seed)


def versus_reference(model: str, head: RecordScores | None) -> dict | None:
    """The reference's command against the headline schedule's test records `head` on the same test images (those
    the reference scored); 'lost': right with the reference's command only."""
    ref_folder = run_folder(model, "reference")
    if ref_folder is None or head is None:
        return None
    out = compare_runs(("reference", load_record_scores(ref_folder)), ("headline", head))
    out["fewer_evaluations"] = out["reference"]["evaluations_per_image"] / out["headline"]["evaluations_per_image"]
    return out


def measured_text(model: str, row: dict) -> str:
    """The model card's accuracy section, from the model's row of fashion_headline.json."""
    t, u = row["test"], row["test_uncalibrated"]
    lines = [
        "Measured through the toolkit at the headline schedule, the reference's CIFAR-10 command with "
        "`--schedule statistical --delta 0.05` added (`--to_keep 5 1 --n_samples 50 500 --loss l1`; "
        "`python benchmarks/fashion_headline.py run`, then `report`)"
        + (f", errors compared in {SPACES[row['error_space']]}" if row.get("error_space") in SPACES else "") + ":", "",
        "| test images | top-1 | evaluations per image | ECE (95% bootstrap) | NLL (95% bootstrap) |",
        "| --- | --- | --- | --- | --- |",
        f"| {t['n']:,} stratified (100 per class) | {t['top1']:.2f}% | {t['evaluations_per_image']:.0f} | "
        f"{t['ece']:.2f}% ({t['ece_interval'][0]:.2f}-{t['ece_interval'][1]:.2f}) | {t['nll']:.3f} "
        f"({t['nll_interval'][0]:.3f}-{t['nll_interval'][1]:.3f}) |"]
    if "whole_test_split" in row:
        w = row["whole_test_split"]
        lines.append(f"| the whole test split ({w['n']:,}) | {w['top1']:.2f}% | {w['evaluations_per_image']:.0f} | "
                     f"{w['ece']:.2f}% ({w['ece_interval'][0]:.2f}-{w['ece_interval'][1]:.2f}) | {w['nll']:.3f} "
                     f"({w['nll_interval'][0]:.3f}-{w['nll_interval'][1]:.3f}) |")
    if row.get("timestep_weights"):
        lines += ["", "Scores use the timestep weights shipped in `timestep_weights.json` (fitted on held-out train images "
                  "it never trained on; its `info` says how), which its runs with --loss "
                  "l1 apply by default (`--timestep_weights none`: plain means); the temperature below was fitted on "
                  "scores weighted the same way."]
    seen = "held-out train images it never trained on" if row["heldout_unseen_in_training"] else \
        "train images (seen in training: the model has no held-out part)"
    lines += ["", f"Probabilities use the temperature {row['temperature']:.4g} shipped in `calibration.json` (--loss l1), "
              f"fitted on {row['heldout_images']:,} {seen}; with the uncalibrated 1e-3 the test ECE is "
              f"{u['ece']:.2f}% and the NLL {u['nll']:.3f}."]
    if "versus_reference" in row:
        v = row["versus_reference"]
        lines += ["", f"On {v['images']} of these test images the reference's command itself scores "
                  f"{v['reference']['top1']:.1f}% at {v['reference']['evaluations_per_image']:.0f} evaluations per image "
                  f"and the headline schedule {v['headline']['top1']:.1f}% at {v['headline']['evaluations_per_image']:.0f} "
                  f"({v['fewer_evaluations']:.1f}x fewer; {v['lost']} lost, {v['gained']} gained)."]
    offsets = offsets_paragraph(model)
    if offsets:
        lines += ["", offsets]
    return "\n".join(lines)


def write_card(model: str, row: dict) -> None:
    """The measured figures into the model's training.json ("measured") and its card, rewritten from it."""
    write_measured(model, measured_text(model, row))


def versus_line(vs: dict) -> str:
    return (f"  against the reference's command on {vs['images']} test images: {vs['reference']['top1']:.1f}% at "
            f"{vs['reference']['evaluations_per_image']:.0f} -> {vs['headline']['top1']:.1f}% at "
            f"{vs['headline']['evaluations_per_image']:.0f} evaluations / image ({vs['fewer_evaluations']:.1f}x fewer; "
            f"{vs['lost']} lost, {vs['gained']} gained)")


def report(models, n_boot: int, cards: bool = False) -> None:
    rows = {}
    for m in models:
        folder = MODELS[m][1]
        held, test = run_folder(m, "heldout"), run_folder(m, "test")
        all_test = None if test is None else load_record_scores(test)
        vs = versus_reference(m, all_test)
        if vs is not None:
            rows[folder] = {"versus_reference": vs}
            print(f"{folder}:\n{versus_line(vs)}")
        settings = {} if test is None else read_manifest_settings(test)
        tau = shipped_temperature(MODELS_DIR / folder, LOSS, settings.get("error_space"), settings.get("timestep_weights"))
        if held is None or test is None or tau is None:
            print(f"{m}: no held-out and test records, or no temperature: no calibration rows")
            continue
        picks = set(stratified_subset(100))  # the calibration rows: the run's test images (any --per_class <= 100)
        rs = all_test.select([i for i in all_test.indices if i in picks]) if len(all_test.indices) > len(picks) \
            else all_test
        before, after = summary(rs, UNCALIBRATED_TEMPERATURE, n_boot), summary(rs, tau, n_boot)
        h = load_record_scores(held)
        unseen = (MODELS_DIR / folder / HELDOUT_FILE).is_file()
        row = {**rows.get(folder, {}), "temperature": tau, "heldout_images": len(h.labels),
               "heldout_unseen_in_training": unseen,
               "heldout_top1": 100.0 * float((h.preds == h.labels).double().mean()), "test": after,
               "test_uncalibrated": {k: before[k] for k in ("temperature", "nll", "nll_interval", "ece", "ece_interval")},
               "folders": {"heldout": str(held.relative_to(ROOT)), "test": str(test.relative_to(ROOT))}}
        if settings.get("objective") == "flow":
            row["error_space"] = settings.get("error_space")
        if settings.get("timestep_weights"):
            row["timestep_weights"] = settings["timestep_weights"]  # the digest of the shipped weights file
        if len(all_test.indices) == TEST_SIZE:
            whole = summary(all_test, tau, n_boot)
            row["whole_test_split"] = {k: whole[k] for k in ("n", "top1", "evaluations_per_image", "nll", "nll_interval",
                                                             "ece", "ece_interval")}
            per_class = accuracy_summary(all_test.preds.tolist(), all_test.labels.tolist())["per_class"]
            row["whole_test_split"]["per_class_top1"] = list(per_class.values())  # in label order
        rows[folder] = row
        if cards:
            write_card(m, row)
        print(f"{folder}: τ {tau:.4g} fitted on {len(h.labels)} held-out train images"
              f"{'' if unseen else ' (seen in training)'}; test: {after['n']} images, top-1 {after['top1']:.2f}%, "
              f"{after['evaluations_per_image']:.0f} evaluations / image, ECE {after['ece']:.2f}% "
              f"[{after['ece_interval'][0]:.2f}, {after['ece_interval'][1]:.2f}] (uncalibrated {before['ece']:.2f}%), "
              f"NLL {after['nll']:.4f} [{after['nll_interval'][0]:.4f}, {after['nll_interval'][1]:.4f}] "
              f"(uncalibrated {before['nll']:.4f})")
        if "whole_test_split" in row:
            w = row["whole_test_split"]
            print(f"  whole test split: top-1 {w['top1']:.2f}% at {w['evaluations_per_image']:.1f} evaluations / image, "
                  f"ECE {w['ece']:.2f}% [{w['ece_interval'][0]:.2f}, {w['ece_interval'][1]:.2f}], NLL {w['nll']:.4f}; "
                  f"per class {', '.join(f'{a:.1f}' for a in w['per_class_top1'])}")
    if not rows:
        return
    write_result(OUT, rows, "benchmarks/fashion_headline.py", merge=True)
    print(f"wrote {OUT}")
    merged = json.loads(OUT.read_text())
    panels = {f"{folder} (τ {merged[folder]['temperature']:.3g})": merged[folder]["test"]
              for _, folder in MODELS.values() if "reliability" in merged.get(folder, {}).get("test", {})}
    if panels:
        plot_reliability(RESULTS / "fashion_calibration.png", panels,
                         "Fashion-MNIST test images at the headline schedule, with the shipped temperature")
        print(f"wrote {RESULTS / 'fashion_calibration.png'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("action", choices=["run", "calibrate", "test", "reference", "whole", "report"])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--per_class", type=int, default=100, help="run: held-out and test images per class; calibrate: held-out images per class")
    p.add_argument("--reference_per_class", type=int, default=10, help="reference: test images per class")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the runs")
    p.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples of the intervals")
    p.add_argument("--cards", action="store_true", help="report: write each reported model's rows into its model card")
    args = p.parse_args(argv)
    for m in args.models if args.action != "report" else []:
        if args.action == "run":
            run([m], args.per_class, args.seed)
        elif args.action == "calibrate":
            calibrate(m, args.per_class, args.seed)
        elif args.action == "test":
            score(m, "test", HEADLINE, "test", stratified_subset(args.per_class), args.seed)
        elif args.action == "reference":
            score(m, "test", REFERENCE, "test", stratified_subset(args.reference_per_class), args.seed)
        else:
            score(m, "test", HEADLINE, "test", None, args.seed)
    report(args.models, args.n_boot, args.cards)


if __name__ == "__main__":
    main()
