"""The headline schedule's runs of the Fashion-MNIST models (fashion_headline.py, flow_scoring.py, dit_weights.py,
class_offsets.py): the reference's CIFAR-10 command and the headline schedule (it with `--schedule statistical
--delta 0.05` added), run through the entry scripts into benchmarks/cache/headline/<model>_<part>/, one record per
image. Runs decide on the errors alone (`--class_offsets none`) unless asked for the class offsets a model ships."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffusion_classifier.records import read_manifest_settings
from diffusion_classifier.weighting import resolve_weights

from . import CACHE, entry_script
from .fashion import LOSS, MODELS, MODELS_DIR, common_flags

HERE = CACHE / "headline"
REFERENCE = ["--to_keep", "5", "1", "--n_samples", "50", "500", "--loss", LOSS]
HEADLINE = REFERENCE + ["--schedule", "statistical", "--delta", "0.05"]


SHIPPED = "shipped"  # run_folder: the timestep weights the model applies by default


NO_OFFSETS = ["--class_offsets", "none"]  # score(): the errors alone, even where the model ships class offsets


def run_folder(model: str, part: str, weights: str | None = SHIPPED, offsets: bool = False) -> Path | None:
    """The run folder of a model's records: part heldout or test (headline schedule) or reference (None before any),
    ranked with `weights`: the digest of a weights file, None for plain means, SHIPPED for the weights the model's
    runs apply by default (its folder's timestep_weights.json for --loss LOSS, weighting.resolve_weights); with the
    class offsets shipped in its calibration.json (`offsets`) or without."""
    if weights == SHIPPED:
        weights = resolve_weights(None, MODELS_DIR / MODELS[model][1], loss=LOSS)[1]
    base = HERE / f"{model}_{'test' if part == 'reference' else part}" / "fashion_mnist"
    for f in sorted(base.glob("*")) if base.is_dir() else []:
        settings = read_manifest_settings(f)
        if (("_stat_" in f.name) != (part == "reference") and settings.get("timestep_weights") == weights
                and bool(settings.get("class_offsets")) == offsets):
            return f
    return None


def score(model: str, part: str, flags: list[str], split: str, subset: list[int] | None, seed: int,
          offsets: bool = False) -> None:
    """Run the model's entry script with `flags` on `subset` of `split` (None: all of it), into HERE/<model>_<part>;
    with the class offsets the model ships (`offsets`: its default) or without (NO_OFFSETS)."""
    args = common_flags(model, seed) + ["--split", split, "--log_dir", str(HERE / f"{model}_{part}"), *flags,
                                        *([] if offsets else NO_OFFSETS)]
    if subset is not None:
        HERE.mkdir(parents=True, exist_ok=True)
        path = HERE / f"{model}_{part}_{split}_{len(subset)}.npy"
        np.save(path, np.sort(np.array(subset)))
        args += ["--subset_path", str(path)]
    out = entry_script(MODELS[model][0]).main(args)
    print(f"{model} {part}: {out['folder']} ({out['done']} scored now, {out['skipped']} already done)", flush=True)


OFFSETS_RESULT = "class_offsets_schedule.json"  # benchmarks/results/: class_offsets.py schedule's rows


def offsets_paragraph(model: str) -> str | None:
    """The model card's paragraph on the class offsets it ships, from class_offsets.py schedule's row (None without)."""
    from . import RESULTS

    path = RESULTS / OFFSETS_RESULT
    row = json.loads(path.read_text()).get(model) if path.is_file() else None
    if not row:
        return None
    fit, t = row["fit"], row["test_stratified"]
    plain, off = t["plain"], t["offsets"]
    return (f"Class offsets: `calibration.json` also holds one log-prior per class, fitted with its own temperature "
            f"({fit['offsets_temperature']:.4g}) on {fit['heldout_images']:,} held-out train images "
            f"(`python benchmarks/class_offsets.py schedule`); the schedules add -τ·b to each class's errors before "
            f"every decision (`--class_offsets none` opts out). On the {t['images']:,} stratified test images: top-1 "
            f"{plain['top1']:.1f}% → {off['top1']:.1f}% ({t['lost']} lost, {t['gained']} gained), ECE "
            f"{plain['ece']:.2f}% → {off['ece']:.2f}%, NLL {plain['nll']:.3f} → {off['nll']:.3f}, at "
            f"{off['evaluations_per_image']:.0f} evaluations per image." + (
                f" On the whole test split with them: {row['whole_test_split']['top1']:.2f}% at "
                f"{row['whole_test_split']['evaluations_per_image']:.0f} evaluations per image, ECE "
                f"{row['whole_test_split']['ece']:.2f}%, NLL {row['whole_test_split']['nll']:.3f} "
                f"(`class_offsets.py whole`)." if "whole_test_split" in row else ""))


def write_measured(model: str, text: str) -> None:
    """A model's measured figures into its training.json ("measured") and its card, rewritten from it."""
    from diffusion_classifier.training import dit, flow, sd

    writer = {"sd": sd.write_sd_card, "dit": dit.write_dit_card, "flow": flow.write_flow_card,
              "flow-unet": sd.write_sd_card}[model]
    folder = MODELS_DIR / MODELS[model][1]
    stats = json.loads((folder / "training.json").read_text())
    stats["measured"] = text
    (folder / "training.json").write_text(json.dumps(stats, indent=1) + "\n")  # as train_tiny_models.py writes it
    writer(folder, stats)


def card_with_offsets(model: str) -> None:
    """Put the class offsets paragraph (offsets_paragraph) in the model's card, in place of an earlier one."""
    paragraph = offsets_paragraph(model)
    folder = MODELS_DIR / MODELS[model][1]
    measured = json.loads((folder / "training.json").read_text()).get("measured", "")
    kept = [p for p in measured.split("\n\n") if p and not p.startswith("Class offsets:")]
    write_measured(model, "\n\n".join(kept + ([paragraph] if paragraph else [])))
