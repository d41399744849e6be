"""Accuracy of a per-class DiT run folder: per image, the class with the lowest mean error wins.

Each class's stored numbers are averaged over (t, trial); accuracy is printed for L2, L1, VLB (the KL
column) and L2+VLB where the records hold them (--save_vb records hold all four, plain ones only L2),
over the images that every class folder has.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_classifier.data.registry import class_conditional_datasets, class_to_label, scored_classes  # noqa: E402
from diffusion_classifier.tasks.per_class import load_per_class_scores, per_class_accuracy  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.errors import InputError, warn  # noqa: E402
from diffusion_classifier.records import read_manifest_settings  # noqa: E402


def dataset_labels(name: str, root, split: str, indices: list[int]) -> dict[int, int]:
    """Labels of dataset images, for records written without one (the reference's bare tensors)."""
    from diffusion_classifier.data.registry import get_dataset

    dataset = get_dataset(name, root, split)
    beyond = [i for i in indices if i >= len(dataset)]
    if beyond:
        raise InputError(f"records of image {beyond[0]} carry no label and --dataset {name} --split {split} has "
                         f"{len(dataset)} images (0..{len(dataset) - 1}): pass the run's --dataset and --split")
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return {i: int(targets[i]) for i in indices}
    return {i: int(dataset[i][1]) for i in indices}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", type=Path, help="per-class run folder: <folder>/<cls>/<idx>.pt")
    p.add_argument("--dataset", default="imagenet", choices=class_conditional_datasets(),
                   help="dataset of the run: maps model classes to its labels (ImageNet-A, ObjectNet)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split, for records that carry no label")
    p.add_argument("--dataset_root", type=Path, default=Path(os.environ.get("DATASET_ROOT", "datasets")),
                   help="where datasets live (env DATASET_ROOT), for records that carry no label")
    args = p.parse_args(argv)
    unreadable = []
    classes, images, scores, labels = load_per_class_scores(args.folder, unreadable)
    missing = [i for i in images if i not in labels]
    if missing:
        labels.update(dataset_labels(args.dataset, args.dataset_root, args.split, missing))
    settings = read_manifest_settings(args.folder)
    dataset = settings.get("dataset") if settings.get("dataset") in class_conditional_datasets() else args.dataset
    class_label = class_to_label(dataset, settings)  # a folder of some classes: its map
    acc = per_class_accuracy(scores, classes, [labels[i] for i in images], class_label)
    print(f"{args.folder}: {len(images)} images scored by all {len(classes)} classes")
    expected = scored_classes(dataset, settings)
    missing = [c for c in expected or [] if c not in classes]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        warn(f"{len(missing)} of the {len(expected)} classes of --dataset {dataset} have no class folder yet ({shown}): "
             f"the accuracy below is the lowest error among the {len(classes)} that do; run eval_prob_dit.py --cls "
             f"for the others")
    if unreadable:
        names = ", ".join(str(p.relative_to(args.folder)) for p in unreadable)
        print(f"  skipped {len(unreadable)} unreadable record(s), their images left out: {names}")
    for metric, value in acc.items():
        print(f"  {metric:<7} accuracy: {value:.2f}%")
    return {"n_images": len(images), "n_classes": len(classes), "accuracy": acc,
            "unreadable": [str(p) for p in unreadable]}


if __name__ == "__main__":
    run_cli(main)
