"""Print top-1 and mean per-class accuracy of eval_prob_adaptive run folders, with a per-class table."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_classifier.records import accuracy_summary, read_predictions  # noqa: E402
from diffusion_classifier.cli import positive_float, positive_int  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.errors import InputError, MissingError  # noqa: E402


def rescore(folder: Path, weights_path, probs: bool, top: int, temperature: float | None = None) -> dict:
    """Accuracy of full-evaluation records under timestep weights; per-image probabilities of any run's records
    (scored with --timestep_weights, else with the weights the run ranked by)."""
    from diffusion_classifier.calibration import expected_calibration_error, load_record_scores, nll, run_temperature
    from diffusion_classifier.records import read_manifest_settings
    from diffusion_classifier.timestep_weights import load_full_errors, predictions
    from diffusion_classifier.weighting import load_weights, run_weights, weights_digest

    w = load_weights(weights_path) if weights_path is not None else None
    out = {}
    if w is not None:
        fe = load_full_errors(folder)
        if int(fe.t.max()) >= len(w.weights):
            raise InputError(f"{weights_path} covers {len(w.weights)} timesteps, {folder} holds timestep {int(fe.t.max())}")
        acc = 100.0 * float((predictions(fe, w) == fe.labels).double().mean())
        out["rescored_top1"] = acc
        print(f"  re-scored with {weights_path} ({w.kind}): top-1 {acc:.2f}% over {len(fe.labels)} records")
    if probs:
        if w is None:
            w, digest = run_weights(folder), read_manifest_settings(folder).get("timestep_weights")
        else:
            digest = weights_digest(weights_path)
        rs = load_record_scores(folder, None if w is None else w.weights)
        tau, source = run_temperature(folder, w, digest, temperature)
        pr = rs.probabilities(tau)
        print(f"  probabilities softmax(-paired score / {tau:.4g}) ({source}): NLL {nll(pr, rs.labels):.4f}, "
              f"ECE {expected_calibration_error(pr, rs.labels):.2f}%")
        print("  index label  pred  " + "  ".join("class:p" for _ in range(min(top, pr.shape[1]))))
        for i, idx in enumerate(rs.indices):
            p_i, c_i = pr[i].sort(descending=True)
            shown = "  ".join(f"{int(c)}:{float(q):.3f}" for c, q in zip(c_i[:top], p_i[:top]))
            print(f"  {idx:>5} {int(rs.labels[i]):>5} {int(c_i[0]):>5}  {shown}")
        out.update(probs=pr.tolist(), indices=rs.indices, temperature=tau, temperature_source=source)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="run folders holding one record per image")
    p.add_argument("--no_table", action="store_true", help="skip the per-class table")
    p.add_argument("--timestep_weights", type=Path, default=None,
                   help="re-score full-evaluation records with these weights (scripts/fit_timestep_weights.py), no recomputing")
    p.add_argument("--probs", action="store_true",
                   help="print per-image class probabilities softmax(-paired score / T), with NLL and ECE: T is "
                        "--temperature, else the one shipped with the run's model for its loss and timestep weights "
                        "(calibration.json), else the weights file's, else 1e-3 (uncalibrated); the scores use "
                        "--timestep_weights, else the weights the run ranked by")
    p.add_argument("--temperature", type=positive_float, default=None, help="--probs: this temperature")
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
        if not preds and not bad and any(p.is_dir() and p.name.isdigit() for p in folder.iterdir()):
            raise InputError(f"{folder} holds class folders (<cls>/<idx>.pt) of eval_prob_dit.py --cls runs, no records "
                             f"of its own; expected a run folder of <idx>.pt records: read it with scripts/print_dit_acc.py "
                             f"{folder} --dataset D")
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
            row.update(rescore(folder, args.timestep_weights, args.probs, args.top, args.temperature))
        out.append(row)
    return out


if __name__ == "__main__":
    run_cli(main)
