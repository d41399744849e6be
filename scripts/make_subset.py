"""Write a stratified subset of a dataset split as a .npy of indices, for --subset_path.

    python scripts/make_subset.py --dataset fashion_mnist --split test --per_class 10 --out fashion100.npy

Each class gets `--per_class` images (all it has when fewer), chosen by a seeded permutation per class;
the indices are sorted. The same flags give the same file on any machine.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from diffusion_classifier.cli import HelpFormatter, dataset_options, int_in, positive_int, seed_int  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.data.datasets import dataset_targets  # noqa: E402
from diffusion_classifier.data.registry import DATASETS, check_split, get_dataset  # noqa: E402
from diffusion_classifier.data.subsets import stratified_indices  # noqa: E402
from diffusion_classifier.errors import InputError  # noqa: E402
from diffusion_classifier.records import atomic_write_bytes, check_output_file  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset whose split is sampled")
    p.add_argument("--split", default="test", help="dataset split")
    p.add_argument("--per_class", type=positive_int, required=True, help="images of each class")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the per-class permutations")
    p.add_argument("--out", type=Path, required=True, help="the .npy file to write")
    p.add_argument("--dataset_root", type=Path, default=Path(os.environ.get("DATASET_ROOT", "datasets")),
                   help="where datasets live (env DATASET_ROOT)")
    for flag in ("--corruption", "--image_column", "--label_column"):
        p.add_argument(flag, default=None, help=f"as {flag} of eval_prob_adaptive.py")
    p.add_argument("--severity", type=int_in(1, 5), default=None, help="as --severity of eval_prob_adaptive.py")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    check_split(args.dataset, args.split)
    out = check_output_file(args.out)  # before the data is read
    dataset = get_dataset(args.dataset, args.dataset_root, args.split, **dataset_options(args))
    labels = dataset_targets(dataset)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]  # a dataset that keeps no label list
    if not len(labels):
        raise InputError(f"{args.dataset} split {args.split!r} has no images to sample")
    indices = np.asarray(stratified_indices(labels, args.per_class, args.seed), dtype=np.int64)
    atomic_write_bytes(out, lambda f: np.save(f, indices), flag="--out")
    print(f"{out}: {len(indices)} indices of {args.dataset} {args.split} "
          f"({len(set(np.asarray(labels)[indices].tolist()))} classes, up to {args.per_class} each, seed {args.seed})")
    return out


if __name__ == "__main__":
    run_cli(main)
