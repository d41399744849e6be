"""Print top-1 and mean per-class accuracy of eval_prob_adaptive run folders, with a per-class table."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_classifier.records import accuracy_summary, read_predictions  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.errors import MissingError  # noqa: E402


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="run folders holding one record per image")
    p.add_argument("--no_table", action="store_true", help="skip the per-class table")
    args = p.parse_args(argv)
    out = []
    for folder in args.folders:
        if not folder.is_dir():
            raise MissingError(f"run folder {folder} does not exist")
        preds, labels, bad = read_predictions(folder)
        s = accuracy_summary(preds, labels)
        print(f"{folder}: read {s['n']} records, skipped {len(bad)} unreadable"
              + (f": {', '.join(p.name for p in bad)}" if bad else ""))
        if s["n"]:
            print(f"  top-1 accuracy: {s['top1']:.2f}%")
            print(f"  mean per-class accuracy: {s['mean_per_class']:.2f}%")
            if not args.no_table:
                print("  class      n   acc%")
                for c, acc in s["per_class"].items():
                    print(f"  {c:>5} {s['per_class_counts'][c]:>6} {acc:6.1f}")
        out.append({**s, "folder": str(folder), "unreadable": len(bad)})
    return out


if __name__ == "__main__":
    run_cli(main)
