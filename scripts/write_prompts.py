"""Write prompts/<dataset>_prompts.csv for the datasets the toolkit knows (all of them by default).

Datasets whose classes are those of a local copy need it: `--dataset imagenetR --dataset_root DIR`
(the ImageNet classes of DIR/imagenet-r/<wnid>/) and `--dataset hf --dataset_root PATH [--split S]`
(the class names of a Hugging Face dataset's label column, filled into --template).
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.errors import InputError  # noqa: E402
from diffusion_classifier.data.prompts import (  # noqa: E402
    DATASET_PROMPTS,
    classes_table,
    dataset_prompts,
    named_classes_table,
    write_prompts_csv,
)
from diffusion_classifier.data.registry import DATASETS, dataset_group, dataset_info  # noqa: E402
from diffusion_classifier.records import check_output_file, check_writable  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "prompts"
FROM_COPY = [name for name, info in DATASETS.items() if info.prompts_from_copy]  # classes read from the data on disk


def table_of(name: str, args):
    """The prompt table of dataset `name`; the ones in FROM_COPY read their classes from --dataset_root."""
    if name not in FROM_COPY:
        return dataset_prompts(name)
    if args.dataset_root is None:
        raise InputError(f"--dataset {name} reads its classes from the data: pass --dataset_root DIR (or set DATASET_ROOT)")
    from diffusion_classifier.data.datasets import dataset_targets
    from diffusion_classifier.data.registry import get_dataset

    class_list = dataset_info(name).class_list
    if class_list is not None:  # labels index a known class list: prompts for the classes the copy holds
        dataset = get_dataset(name, args.dataset_root, "test")
        return classes_table(DATASET_PROMPTS[class_list], set(dataset_targets(dataset)))
    dataset = get_dataset(name, args.dataset_root, args.split, image_column=args.image_column,
                          label_column=args.label_column)
    return named_classes_table(dataset.classes, args.template)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=DEFAULT_OUT, help="folder the CSVs are written to")
    parser.add_argument("--out", type=Path, default=None,
                        help="the CSV file to write, for one dataset; not given: <out_dir>/<dataset>_prompts.csv "
                             "(--dataset hf: <out_dir>/hf_<folder name>_prompts.csv)")
    choices = list(DATASET_PROMPTS) + list(FROM_COPY)
    parser.add_argument("--dataset", nargs="+", default=list(DATASET_PROMPTS), choices=choices,
                        metavar="NAME", help=f"datasets to write, from: {', '.join(choices)}")
    parser.add_argument("--dataset_root", type=Path, default=os.environ.get("DATASET_ROOT"),
                        help="imagenetR: the folder holding imagenet-r/; hf: the Hugging Face dataset; imagefolder: the image folder "
                             "(env DATASET_ROOT)")
    parser.add_argument("--split", default="train", help="hf: the split whose label column names the classes; imagefolder: its split folder, if it has them")
    parser.add_argument("--image_column", default=None, help="hf: column of the images; not given: 'image' or 'img'")
    parser.add_argument("--label_column", default=None, help="hf: column of the labels; not given: 'label' or 'labels'")
    parser.add_argument("--template", nargs="+", default=["a photo of a {}."],
                        help="hf, imagefolder: prompt templates, {} is the class name (one row per class and template)")
    args = parser.parse_args(argv)
    if args.out is not None and len(args.dataset) != 1:
        raise InputError(f"--out names one file: pass one --dataset, got {len(args.dataset)}")
    if args.out is not None:
        check_output_file(args.out)
    else:
        check_writable(args.out_dir, "--out_dir")
    written = []
    for name in args.dataset:
        table = table_of(name, args)
        if args.out is not None:
            path = args.out
        else:
            stem = dataset_group(name, args.dataset_root) if name in FROM_COPY else name  # what --prompt_path defaults to
            path = args.out_dir / f"{stem}_prompts.csv"
        write_prompts_csv(path, table)
        print(f"{path}: {len(table)} prompts, {len(set(table.classidx))} classes")
        written.append(path)
    return written


if __name__ == "__main__":
    run_cli(main)
