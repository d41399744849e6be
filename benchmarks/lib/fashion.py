"""Where fashion_eval.py's records live (benchmarks/cache/fashion/) and what they hold: subsets, run folders, figures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffusion_classifier.data.subsets import stratified_indices
from diffusion_classifier.records import accuracy_summary
from diffusion_classifier.training.common import HELDOUT_FILE  # written by scripts/train_tiny_models.py --holdout

from . import ROOT, entry_script
from .replay import N_TIMESTEPS

CACHE = ROOT / "benchmarks" / "cache" / "fashion"
MODELS_DIR = ROOT / "diffusion_classifier" / "tiny_models"
# --models name -> (the entry script that scores it, its folder in MODELS_DIR)
MODELS = {"sd": ("eval_prob_adaptive", "fashion-sd"), "dit": ("eval_prob_dit", "fashion-dit"),
          "flow": ("eval_prob_adaptive", "fashion-flow"),
          # fashion-sd's UNet, data and recipe with the rectified-flow objective: the flow objective alone, compared
          "flow-unet": ("eval_prob_adaptive", "fashion-flow-unet")}
N_FULL = N_TIMESTEPS  # timesteps of the full evaluation
LOSS = "l1"  # the paper's CIFAR-10 setting, every Fashion-MNIST run's loss
# a full evaluation: every class at the N_FULL stratified timesteps (noise row k at the k-th), on plain means (the
# records keep raw errors either way; weights, the shipped ones included, are replayed on them)
FULL = ["--schedule", "statistical", "--to_keep", "1", "--n_samples", str(N_FULL), "--min_samples", str(N_FULL),
        "--timestep_weights", "none"]
# flow variants of the full evaluation: name -> (flags, the suffix they give the run folder)
FLOW_VARIANTS = {"velocity": (["--error_space", "native"], "_errnative"),
                 "uniform_sigma": (["--flow_grid", "uniform_sigma"], "_griduniform_sigma")}


def stratified_subset(per_class: int, split: str = "test", seed: int = 0) -> list[int]:
    """per_class images of every class of the split, by a seeded permutation per class; sorted indices."""
    from diffusion_classifier.data.fashion_mnist import load_arrays

    return stratified_indices(load_arrays(split)[1], per_class, seed)


def log_dir(model: str, part: str = "") -> Path:
    return CACHE / (model + (f"_{part}" if part else ""))


def heldout_picks(folder: str, per_class: int, seed: int = 0) -> tuple[np.ndarray, bool]:
    """(train-split indices, whether the model never trained on them): per_class of every class, by
    datasets.stratified_indices(seed), from the held-out images of the model in MODELS_DIR/<folder> when it has a
    heldout_train.json, else from the whole train split."""
    from diffusion_classifier.data.fashion_mnist import load_arrays

    labels = load_arrays("train")[1]
    held = MODELS_DIR / folder / HELDOUT_FILE
    pool = np.array(json.loads(held.read_text())["indices"]) if held.is_file() else np.arange(len(labels))
    return pool[stratified_indices(labels[pool], per_class, seed)], held.is_file()


def heldout_subset(model: str, per_class: int) -> tuple[list[int], bool]:
    """(sorted train-split indices to fit on, whether the model never trained on them): heldout_picks of the
    --models name `model`, seed 0."""
    picks, unseen = heldout_picks(MODELS[model][1], per_class)
    return sorted(picks.tolist()), unseen


def run_folders(model: str) -> dict[str, Path]:
    """The run folders of a model's records: reference, full, full velocity / full uniform_sigma (flow), heldout."""
    found = {}
    for part in ("", "heldout"):
        base = log_dir(model, part) / "fashion_mnist"
        for folder in sorted(base.glob("*")) if base.is_dir() else []:
            if "5_1keep_50_500samples" in folder.name and "stat" not in folder.name:
                found["reference"] = folder
            elif f"1keep_{N_FULL}samples" in folder.name and "stat" in folder.name:
                variant = next((v for v, (_, tag) in FLOW_VARIANTS.items() if folder.name.endswith(tag)), None)
                found["heldout" if part else (f"full {variant}" if variant else "full")] = folder
    return found


def folder_stats(folder: Path, only=None) -> dict:
    """Top-1, per-class top-1 and evaluations per image of a run folder's records (of dataset indices `only`)."""
    from diffusion_classifier.records import load_record

    preds, labels, evals = [], [], []
    for path in sorted(folder.glob("*.pt")):
        if not path.stem.isdigit() or (only is not None and int(path.stem) not in only):
            continue
        rec = load_record(path)
        preds.append(int(rec["pred"]))
        labels.append(int(rec["label"]))
        evals.append(sum(len(v["t"]) for v in rec["errors"].values()))
    summary = accuracy_summary(preds, labels)
    return {"folder": folder.name, "n_images": summary["n"], "accuracy": summary["top1"],
            "per_class": summary["per_class"], "evals_per_image": sum(evals) / max(len(evals), 1)}


def report_whole() -> dict:
    """fashion-sd's headline runs on the test split (benchmarks/cache/fashion/sd_whole, README's commands): each
    run folder's figures, and every rule on the 1,000-image subset that all of them scored."""
    base = CACHE / "sd_whole" / "fashion_mnist"
    out = {}
    subset_file = CACHE / "subset_test_100.npy"
    subset = set(np.load(subset_file).tolist()) if subset_file.is_file() else None
    for folder in sorted(base.glob("*")) if base.is_dir() else []:
        out[folder.name] = {"all": folder_stats(folder)}
        if subset is not None:
            out[folder.name]["subset_1000"] = folder_stats(folder, subset)
    return out


def common_flags(model: str, seed: int) -> list[str]:
    """The flags every run of a --models name shares: its folder, the data, the loss, the noise seed, the CPU."""
    entry, folder = MODELS[model]
    common = ["--model", str(MODELS_DIR / folder), "--dataset", "fashion_mnist", "--loss", LOSS, "--seed", str(seed),
              "--device", "cpu", "--no_progress"]
    if entry == "eval_prob_adaptive":
        common += ["--prompt_path", str(ROOT / "prompts" / "fashion_mnist_prompts.csv")]
    return common


def score_heldout_full(model: str, per_class: int, seed: int, folder: Path, flags=()) -> None:
    """The full evaluation (FULL, and `flags`) of per_class held-out train images of every class of a --models name,
    into run folders under `folder` (resumes); stops when the model has no held-out part, since what is fitted on
    these records must be fitted on images it never saw."""
    idx, unseen = heldout_subset(model, per_class)
    if not unseen:
        raise SystemExit(f"{MODELS[model][1]} has no {HELDOUT_FILE}: what is fitted here needs images it never saw")
    CACHE.mkdir(parents=True, exist_ok=True)
    subset = CACHE / f"heldout_{model}_{per_class}.npy"
    np.save(subset, np.array(idx))
    out = entry_script(MODELS[model][0]).main(common_flags(model, seed) + FULL + [
        "--split", "train", "--subset_path", str(subset), "--log_dir", str(folder), *flags])
    print(f"{model} held-out: {out['folder']} ({out['done']} scored now, {out['skipped']} already done)", flush=True)
