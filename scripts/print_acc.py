"""Print top-1 and mean per-class accuracy of eval_prob_adaptive run folders, with a per-class table."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_classifier.records import accuracy_summary, read_predictions  # noqa: E402
from diffusion_classifier.cli import positive_int  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.errors import InputError, MissingError  # noqa: E402


def rescore(folder: Path, weights_path, probs: bool, top: int) -> dict:
    """Accuracy of the records' errors under timestep weights, and per-image probabilities."""
    from diffusion_classifier.calibration import (
        expected_calibration_error, load_full_errors, load_weights, predictions, probabilities)

    fe = load_full_errors(folder)
    w = load_weights(weights_path) if weights_path is not None else None
    if w is not None and int(fe.t.max()) >= len(w.weights):
        raise InputError(f"{weights_path} covers {len(w.weights)} timesteps, {folder} holds timestep {int(fe.t.max())}")
    acc = 100.0 * float((predictions(fe, w) == fe.labels).double().mean())
    out = {"rescored_top1": acc}
    if w is not None:
        print(f"  re-scored with {weights_path} ({w.kind}): top-1 {acc:.2f}% over {len(fe.labels)} records")
    if probs:
        tau = w.temperature if w is not None else 1.0
        pr = probabilities(fe, w, tau)
        print(f"  probabilities (temperature {tau:.4g}; ECE {expected_calibration_error(pr, fe.labels):.2f}%):")
        print("  index label  pred  " + "  ".join("class:p" for _ in range(min(top, pr.shape[1]))))
        for i, idx in enumerate(fe.indices):
            p_i, c_i = pr[i].sort(descending=True)
            shown = "  ".join(f"{int(c)}:{float(q):.3f}" for c, q in zip(c_i[:top], p_i[:top]))
            print(f"  {idx:>5} {int(fe.labels[i]):>5} {int(c_i[0]):>5}  {shown}")
        out["probs"] = pr.tolist()
        out["indices"] = fe.indices
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="run folders holding one record per image")
    p.add_argument("--no_table", action="store_true", help="skip the per-class table")
    p.add_argument("--timestep_weights", type=Path, default=None,
                   help="re-score full-evaluation records with these weights (scripts/fit_timestep_weights.py), no recomputing")
    p.add_argument("--probs", action="store_true",
                   help="print per-image class probabilities softmax(-mean error / T) of full-evaluation records "
                        "(T: the weights file's temperature, else 1)")
    p.add_argument("--top", type=positive_int, default=3, help="--probs: classes shown per image")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    out = []
    for folder in args.folders:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder} is a file; expected a run folder holding one record per image")
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
        row = {**s, "folder": str(folder), "unreadable": len(bad)}
        if args.timestep_weights is not None or args.probs:
            row.update(rescore(folder, args.timestep_weights, args.probs, args.top))
        out.append(row)
    return out


if __name__ == "__main__":
    run_cli(main)
