"""Write prompts/<dataset>_prompts.csv for the datasets the toolkit knows (all of them by default)."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusion_classifier.prompts import DATASET_PROMPTS, dataset_prompts, write_prompts_csv  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "prompts"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=DEFAULT_OUT, help="folder the CSVs are written to")
    parser.add_argument("--dataset", nargs="+", default=list(DATASET_PROMPTS), choices=list(DATASET_PROMPTS),
                        metavar="NAME", help=f"datasets to write, from: {', '.join(DATASET_PROMPTS)}")
    args = parser.parse_args()
    for name in args.dataset:
        table = dataset_prompts(name)
        path = args.out_dir / f"{name}_prompts.csv"
        write_prompts_csv(path, table)
        print(f"{path}: {len(table)} prompts, {len(set(table.classidx))} classes")


if __name__ == "__main__":
    run_cli(main)
