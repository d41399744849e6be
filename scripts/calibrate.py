"""Fit a model's temperature on the records of held-out labelled images, ship it beside the model, check it on others.

HELDOUT_RUN folders hold one record per labelled image of a classification run (eval_prob_adaptive.py, or
eval_prob_dit.py's adaptive mode), with any schedule, on images the model never trained on. Each record gives
every prompt a paired score (its mean error estimated on the winner's samples: schedules.staged.paired_scores),
and the temperature τ minimises the negative log-likelihood of the labels under softmax(-score / τ).

The temperature is written, for the runs' --loss, into the model folder's calibration.json (--out to write it
elsewhere): DiffusionClassifier.from_pretrained and print_acc.py --probs apply it by default to that model's
probabilities with that loss. Runs that ranked by timestep weights (the model's shipped timestep_weights.json, or
--timestep_weights FILE) are scored with the same weights, and the temperature is kept for those weights only.
--check scores other runs' records with it (top-1, NLL and ECE with bootstrap
intervals) and --plot draws their reliability diagram.

--class_offsets also fits one log-prior per class with its own temperature (calibration.fit_calibration): a bias
between the classes (prompts whose errors are low or high whatever the image), which no temperature mends. They are
written beside the temperature with a digest of the runs' candidates (their prompts, or classes); the schedules of
eval_prob_adaptive.py and eval_prob_dit.py then add -temperature x offset to each class's errors before every decision
(--class_offsets none opts out), so the class a run answers is the most probable one. --offsets_only adds them to an
existing entry and keeps its temperature (fitted, perhaps, on more images). Every --check run is reported with them.

    python scripts/calibrate.py runs/heldout/... --check runs/test/... --plot reliability.png
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_classifier.calibration import (  # noqa: E402
    CALIBRATION_FILE, UNCALIBRATED_TEMPERATURE, RecordScores, fit_calibration, load_calibration, load_record_scores,
    plot_reliability, summary, temperature_for, write_calibration)
from diffusion_classifier.class_offsets import (  # noqa: E402
    ClassOffsets, candidates_digest, run_candidates, run_offsets)
from diffusion_classifier.cli import HelpFormatter, positive_int, seed_int  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.errors import InputError, MissingError  # noqa: E402
from diffusion_classifier.records import check_output_file, read_manifest_settings  # noqa: E402
from diffusion_classifier.weighting import run_weights  # noqa: E402

# the settings a temperature depends on: every held-out run must share them, and they are kept beside it
SHARED_SETTINGS = ("model", "loss", "timestep_weights", "error_space")
KEPT_SETTINGS = ("schedule", "to_keep", "n_samples", "delta", "variance", "spending", "epsilon", "min_samples",
                 "n_trials", "img_size", "interpolation", "timestep_weights", "error_space", "flow_grid")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("heldout_runs", nargs="+", type=Path, help="run folders of held-out labelled images")
    p.add_argument("--out", type=Path, default=None,
                   help=f"calibration file to write (its other losses are kept); not given: {CALIBRATION_FILE} in "
                        "the runs' model folder")
    p.add_argument("--check", nargs="+", type=Path, default=[], help="run folders scored with the fitted temperature")
    p.add_argument("--plot", type=Path, default=None, help="reliability diagram (PNG) of the --check runs")
    p.add_argument("--n_boot", type=positive_int, default=1000, help="bootstrap resamples of the intervals")
    p.add_argument("--n_bins", type=positive_int, default=15, help="confidence bins of ECE and the diagram")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the bootstrap")
    p.add_argument("--class_offsets", action="store_true",
                   help="also fit one log-prior per class (with its own temperature), write them beside the temperature "
                        "(the schedules apply them) and report every run with them")
    p.add_argument("--offsets_only", action="store_true",
                   help="with --class_offsets: keep the calibration file's temperature for this loss, add the offsets")
    p.add_argument("--timestep_weights", type=Path, default=None,
                   help="the weights file the runs ranked by, where it is not the one shipped in their model folder")
    return p.parse_args(argv)


def run_settings(folders: list[Path]) -> dict:
    """The manifest settings the held-out runs share (model and loss must agree)."""
    found = []
    for f in folders:
        if not f.is_dir():
            raise MissingError(f"run folder {f} does not exist")
        s = read_manifest_settings(f)
        if not s.get("loss"):
            raise InputError(f"{f}: expected a run folder with a manifest.json naming its --loss, found none")
        found.append(s)
    for key in SHARED_SETTINGS:
        values = {str(s.get(key)) for s in found}
        if len(values) > 1:
            raise InputError(f"the held-out runs must share one --{key}, found {sorted(values)}")
    return found[0]


def check_settings(folders: list[Path], heldout: dict, class_offsets: bool) -> None:
    """The --check runs are runs of the held-out runs' model, loss, timestep weights and error space (and, with class
    offsets, of their candidates): the temperature (and offsets) fitted on those apply to them only."""
    for f in folders:
        s = run_settings([f])
        for key in SHARED_SETTINGS:
            if str(s.get(key)) != str(heldout.get(key)):
                raise InputError(f"--check {f}: expected a run of the held-out runs' --{key} {heldout.get(key)}, "
                                 f"found --{key} {s.get(key)}")
        if class_offsets and candidates_digest(run_candidates(s)) != candidates_digest(run_candidates(heldout)):
            raise InputError(f"--check {f}: expected a run of the held-out runs' candidates (class offsets are fitted "
                             f"for one set), found one that scores other prompts (or classes)")


def scores_of(folder: Path, weights_file: Path | None) -> RecordScores:
    """The paired scores of a run's records, weighted as the run ranked them (weighting.run_weights)."""
    w = run_weights(folder, [weights_file])
    return load_record_scores(folder, None if w is None else w.weights)


def line(name: str, s: dict) -> str:
    return (f"  {name}: {s['n']} images, top-1 {s['top1']:.2f}%, {s['evaluations_per_image']:.0f} evaluations / image; "
            f"τ {s['temperature']:.4g}: NLL {s['nll']:.4f} [{s['nll_interval'][0]:.4f}, {s['nll_interval'][1]:.4f}], "
            f"ECE {s['ece']:.2f}% [{s['ece_interval'][0]:.2f}, {s['ece_interval'][1]:.2f}]")


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = run_settings(args.heldout_runs)
    check_settings(args.check, settings, args.class_offsets)  # before anything is written
    out = args.out
    if out is None:
        model = Path(str(settings.get("model")))
        if not model.is_dir():
            raise InputError(f"the runs' model {settings.get('model')!r} is not a local folder; give --out FILE")
        out = model / CALIBRATION_FILE
    check_output_file(out)
    if args.plot is not None:
        check_output_file(args.plot)
    if args.offsets_only and not args.class_offsets:
        raise InputError("--offsets_only keeps the temperature and adds class offsets: pass --class_offsets too")
    if any(run_offsets(f) for f in args.heldout_runs):
        raise InputError("the held-out runs applied class offsets (their manifests hold them): fit on runs made with "
                         "--class_offsets none, whose scores are the errors alone")
    if args.class_offsets and len({candidates_digest(run_candidates(read_manifest_settings(f)))
                                   for f in args.heldout_runs}) > 1:
        raise InputError("class offsets are fitted for one set of candidates: the held-out runs score different prompts")
    loss = settings["loss"]
    held = RecordScores.cat([scores_of(f, args.timestep_weights) for f in args.heldout_runs])
    entries = load_calibration(out)
    info = {"n_images": len(held.labels), "runs": [f.name for f in args.heldout_runs],  # names: no machine paths
            "settings": {k: settings.get(k) for k in KEPT_SETTINGS if settings.get(k) is not None}}
    if args.offsets_only:
        if loss not in entries:
            raise MissingError(f"{out} holds no temperature for --loss {loss} to keep: run without --offsets_only")
        tau = float(entries[loss]["temperature"])
        info = {k: v for k, v in entries[loss].items() if k not in ("temperature", "class_offsets")}
        print(f"kept τ {tau:.4g} for --loss {loss} ({out}); {len(held.labels)} held-out images:")
    else:
        tau = temperature_for(held.scores, held.labels, held.candidate_class)
        print(f"fitted on {len(held.labels)} held-out images (--loss {loss}):")
    before = summary(held, UNCALIBRATED_TEMPERATURE, args.n_boot, args.n_bins, args.seed)
    after = summary(held, tau, args.n_boot, args.n_bins, args.seed)
    print(line(f"uncalibrated (τ {UNCALIBRATED_TEMPERATURE:g})", before))
    print(line("kept" if args.offsets_only else "fitted", after))
    if not args.offsets_only:
        info["heldout"] = {k: after[k] for k in ("top1", "evaluations_per_image", "nll", "ece")}
    checks, biased, fitted = {}, {}, None
    if args.class_offsets:
        tau_b, offsets = fit_calibration(held.scores, held.labels, held.candidate_class, offsets=True)
        biased["heldout"] = summary(held, tau_b, args.n_boot, args.n_bins, args.seed, offsets)
        fitted = ClassOffsets(tau_b, offsets, candidates_digest(run_candidates(settings)),
                              {"n_images": len(held.labels), "runs": [f.name for f in args.heldout_runs],
                               "heldout": {k: biased["heldout"][k] for k in ("top1", "nll", "ece")}})
        print(f"  with one log-prior per class (fitted on these images too; τ {tau_b:.4g}): offsets "
              + ", ".join(f"class {c} {float(b):+.2f}" for c, b in enumerate(offsets)))
        print(line("held-out, with the offsets", biased["heldout"]))
    path = write_calibration(out, loss, tau, info, fitted)
    print(f"  wrote τ {tau:.4g}{' and the class offsets' if fitted else ''} for --loss {loss} to {path}")
    if fitted is None and (entries.get(loss) or {}).get("class_offsets"):
        print(f"  the class offsets {path} held for --loss {loss} were fitted on other runs and are dropped; "
              f"fit them again with --class_offsets")
    for f in args.check:
        rs = scores_of(f, args.timestep_weights)
        applied = run_offsets(f)
        if applied:  # its scores hold the shift its schedule applied: reported at the temperature fitted with them
            checks[str(f)] = summary(rs, float(applied["temperature"]), args.n_boot, args.n_bins, args.seed)
            print(line(f"{f}, with the class offsets its schedule applied", checks[str(f)]))
            continue
        checks[str(f)] = summary(rs, tau, args.n_boot, args.n_bins, args.seed)
        print(line(str(f), checks[str(f)]))
        if args.class_offsets:
            biased[str(f)] = summary(rs, tau_b, args.n_boot, args.n_bins, args.seed, offsets)
            print(line(f"{f}, with the offsets", biased[str(f)]))
    if args.plot is not None:
        rows = {Path(k).name[:40]: v for k, v in checks.items()} or {"held-out (fitted)": after}
        plot_reliability(args.plot, rows, f"reliability at the fitted temperature {tau:.4g}")
        print(f"  drew {args.plot}")
    out = {"temperature": tau, "file": str(path), "heldout_before": before, "heldout": after, "checks": checks}
    if args.class_offsets:
        out["class_offsets"] = {"temperature": tau_b, "offsets": offsets.tolist(), "summaries": biased}
    return out


if __name__ == "__main__":
    run_cli(main)
