"""The paper's CIFAR-10 protocol on Fashion-MNIST, with the shipped fashion models: resumable records, then a report.

`run` scores a seeded stratified subset of the test split with each model through the toolkit's own scripts
(eval_prob_adaptive.py for fashion-sd / fashion-flow, eval_prob_dit.py's adaptive mode for fashion-dit),
one record per image in benchmarks/cache/fashion/<model>/..., so a stopped run resumes where it stopped:
  - the reference's CIFAR-10 schedule, `--to_keep 5 1 --n_samples 50 500 --loss l1` (2,750 evaluations per image);
  - a full evaluation: every class at the 200 stratified timesteps (noise row k at the k-th), from which every
    statistical schedule (--z, --delta with iid or stratified variance) replays exactly (statistical.Replay).
`report` reads the records, replays the schedules and writes benchmarks/results/fashion_schedules.{json,png}.

    OMP_NUM_THREADS=1 nohup python benchmarks/fashion_eval.py run --models sd --per_class 10 &
    python benchmarks/fashion_eval.py report
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from common import ROOT, stratified_indices
from digits_c_full import N_TIMESTEPS

from diffusion_classifier.calibration import load_full_errors
from diffusion_classifier.records import accuracy_summary, read_predictions
from schedules_digits_c import replay, schedules  # the same 200-timestep full evaluation and replays

CACHE = ROOT / "benchmarks" / "cache" / "fashion"
RESULTS = ROOT / "benchmarks" / "results"
MODELS_DIR = ROOT / "diffusion_classifier" / "tiny_models"
MODELS = {"sd": ("eval_prob_adaptive", "fashion-sd"), "dit": ("eval_prob_dit", "fashion-dit"),
          "flow": ("eval_prob_adaptive", "fashion-flow")}
N_FULL = N_TIMESTEPS
LOSS = "l1"  # the paper's CIFAR-10 setting
REFERENCE = ["--to_keep", "5", "1", "--n_samples", "50", "500"]
FULL = ["--schedule", "statistical", "--to_keep", "1", "--n_samples", str(N_FULL), "--min_samples", str(N_FULL)]


def stratified_subset(per_class: int, split: str = "test", seed: int = 0) -> list[int]:
    """per_class images of every class of the split, by a seeded permutation per class; sorted indices."""
    from diffusion_classifier.fashion_mnist import load_arrays

    return stratified_indices(load_arrays(split)[1], per_class, seed)


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def log_dir(model: str) -> Path:
    return CACHE / model


def run(models, per_class: int, which, seed: int) -> None:
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
        common = ["--model", str(path), "--dataset", "fashion_mnist", "--split", "test", "--loss", LOSS,
                  "--subset_path", str(subset), "--log_dir", str(log_dir(m)), "--seed", str(seed), "--device", "cpu"]
        if entry == "eval_prob_adaptive":
            common += ["--prompt_path", str(ROOT / "prompts" / "fashion_mnist_prompts.csv")]
        for name, flags in (("reference", REFERENCE), ("full", FULL)):
            if name in which:
                out = script(entry).main(common + flags)
                print(f"{m} {name}: {out['folder']} ({out['done']} scored now, {out['skipped']} already done)", flush=True)


def run_folders(model: str) -> dict[str, Path]:
    """The reference and full run folders of a model (the ones its records are in)."""
    base = log_dir(model) / "fashion_mnist"
    found = {}
    for folder in sorted(base.glob("*")) if base.is_dir() else []:
        if "5_1keep_50_500samples" in folder.name and "stat" not in folder.name:
            found["reference"] = folder
        elif f"1keep_{N_FULL}samples" in folder.name and "stat" in folder.name:
            found["full"] = folder
    return found


def evaluations_per_image(folder: Path) -> float:
    """Denoiser evaluations per image, counted from the records (timesteps scored per candidate, summed)."""
    from diffusion_classifier.records import load_record

    paths = sorted(p for p in folder.glob("*.pt") if p.stem.isdigit())
    total = sum(sum(len(v["t"]) for v in load_record(p)["errors"].values()) for p in paths)
    return total / max(len(paths), 1)


def report(models, deltas, zs, min_samples: int) -> dict:
    out = {}
    for m in models:
        folders = run_folders(m)
        rows = []
        if "reference" in folders:
            preds, labels, _ = read_predictions(folders["reference"])
            rows.append({"schedule": "reference keep 5 1 / samples 50 500 (real run)",
                         "accuracy": accuracy_summary(preds, labels)["top1"],
                         "evals_per_image": evaluations_per_image(folders["reference"]), "n_images": len(labels)})
        if "full" in folders:
            fe = load_full_errors(folders["full"])
            for name, kind, classify in schedules(deltas, zs, min_samples):
                if kind != "reference":  # the staged schedules ran for real above
                    rows.append({"schedule": name + " (exact replay)", **replay(fe, classify, range(len(fe.labels)))})
        if rows:
            out[MODELS[m][1]] = rows
    return out


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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("command", choices=["run", "report"], help="compute records, or report on them")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to use")
    p.add_argument("--per_class", type=int, default=100, help="run: test images per class in the stratified subset")
    p.add_argument("--schedules", nargs="+", default=["reference", "full"], choices=["reference", "full"],
                   help="run: which records to compute")
    p.add_argument("--seed", type=int, default=0, help="run: noise seed")
    p.add_argument("--deltas", type=float, nargs="+", default=[0.05, 0.1], help="report: anytime schedules' delta")
    p.add_argument("--z", type=float, nargs="+", default=[2.0, 3.0], help="report: fixed-z schedules")
    p.add_argument("--min_samples", type=int, default=10, help="report: timesteps before the first pruning")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "run":
        run(args.models, args.per_class, args.schedules, args.seed)
        return
    results = report(args.models, args.deltas, args.z, args.min_samples)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fashion_schedules.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, RESULTS / "fashion_schedules.png")
    for model, rows in results.items():
        print(f"\n{model}\n| schedule | top-1 (%) | evaluations per image | images |\n|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['schedule']} | {r['accuracy']:.2f} | {r['evals_per_image']:.0f} | {r['n_images']} |")


if __name__ == "__main__":
    main()
