"""Schedules, learned timestep weights and robustness on clean and corrupted digits (digits_c).

Reads the full-evaluation records benchmarks/digits_c_full.py wrote (every class at the 200
stratified timesteps, noise row k for the k-th, on a fixed stratified subset of the test split) and
replays every schedule on them (lib/replay.py): the statistical schedules (fixed z and anytime-valid
at several deltas) ask only for (timestep, noise row) pairs of the full evaluation, so their replay is
exactly a real run; the reference-style staged schedules use the same 200-timestep grid but their own
noise rows in a real run, so their replay is the same grid with another draw of noise.

Outputs (benchmarks/results/): schedules_digits_c.json / .png (accuracy vs evaluations per image),
robustness_digits_c.json / .png (full-evaluation accuracy per corruption and severity for digits-sd,
digits-dit and logistic regression on clean pixels), timestep_weights_digits_c.json (held-out accuracy
of learned weights against uniform, and calibration); a file that is a list is written as {"rows": [...]}.

    python benchmarks/schedules_digits_c.py    (the same as python benchmarks/schedules.py --corrupted)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lib import RESULTS, HelpFormatter
from lib.digits_c import SETS, run_folder, set_name
from lib.replay import replay, schedules
from lib.results import write_result

from diffusion_classifier.timestep_weights import fit_and_report, fit_weights, load_full_errors, split_indices

MODELS = {"sd": "digits-sd", "dit": "digits-dit"}


def restrict(fe, indices):
    """fe on the images whose dataset index is in `indices` (the images both models scored)."""
    keep = [i for i, idx in enumerate(fe.indices) if idx in indices]
    sel = torch.tensor(keep, dtype=torch.long)
    return type(fe)(fe.errors[sel], fe.t, fe.labels[sel], fe.preds[sel], [fe.indices[i] for i in keep],
                    fe.candidate_class)


def logistic_regression(corruption, severity, indices) -> tuple[float, float]:
    """(accuracy on the subset, accuracy on the whole test split) of logistic regression on clean pixels."""
    from sklearn.linear_model import LogisticRegression

    from diffusion_classifier.data.digits import load_digits_arrays

    xtr, ytr = load_digits_arrays("train")
    clf = LogisticRegression(max_iter=5000).fit(xtr.reshape(len(xtr), -1) / 255.0, ytr)
    x, y = load_digits_arrays("test", corruption, severity)
    ok = clf.predict(x.reshape(len(x), -1) / 255.0) == y
    return 100.0 * ok[indices].mean(), 100.0 * ok.mean()


def plot_schedules(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["set"] for r in rows}, key=lambda s: [set_name(*x) for x in SETS].index(s))
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    fig, axes = plt.subplots(len(models), 1, figsize=(8, 3.6 * len(models)), squeeze=False)
    markers = {"full": "*", "reference": "s", "fixed-z": "^", "anytime-iid": "o", "anytime-stratified": "D"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[:, 0], models):
        for j, sname in enumerate(sets):
            pts = [r for r in rows if r["model"] == m and r["set"] == sname and r["weights"] == "uniform"]
            for kind, mk in markers.items():
                q = [r for r in pts if r["kind"] == kind]
                ax.plot([r["evals_per_image"] for r in q], [r["accuracy"] for r in q], mk, color=colors[j % 10],
                        linestyle="-" if kind.startswith("anytime") else "none", label=sname if kind == "full" else None, ms=5)
        ax.set_xscale("log")
        ax.set_xlabel("denoiser evaluations per image (log); * full, s reference, ^ fixed z, o anytime iid, D anytime stratified")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{MODELS[m]}: clean and corrupted digits (uniform weights)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_robustness(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["set"] for r in table]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(names)), 4))
    for j, (key, label) in enumerate((("sd", "digits-sd (full)"), ("dit", "digits-dit (full)"), ("logreg", "logistic regression"))):
        ax.bar(x + (j - 1) * 0.27, [r.get(key, np.nan) for r in table], 0.27, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace("digits_c_", "") for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("top-1 (%) on the subset")
    ax.set_title("digits_c: accuracy per corruption and severity")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--deltas", nargs="+", type=float, default=[0.01, 0.05, 0.1, 0.2], help="anytime schedules' delta")
    p.add_argument("--z", nargs="+", type=float, default=[2.0, 3.0], help="fixed-z schedules' z")
    p.add_argument("--min_samples", type=int, default=10, help="timesteps before a statistical schedule first prunes")
    p.add_argument("--target_points", type=float, default=0.5,
                   help="target: an anytime schedule within this many points of full accuracy ...")
    p.add_argument("--target_saving", type=float, default=5.0, help="... with this many times fewer evaluations")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG files")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    available = []
    for corruption, severity in SETS:
        folders = {m: run_folder(m, corruption, severity) for m in MODELS}
        if all(f.is_dir() and any(f.glob("*.pt")) for f in folders.values()):
            available.append((corruption, severity, folders))
    rows, robust, weights_report = [], [], []
    learned = {}  # model -> poly weights fit on the clean set's fit half
    for corruption, severity, folders in available:
        sname = set_name(corruption, severity)
        entry = {"set": sname, "corruption": corruption, "severity": severity}
        loaded = {m: load_full_errors(f) for m, f in folders.items()}
        common = set.intersection(*(set(fe.indices) for fe in loaded.values()))
        for m, folder in folders.items():
            fe = restrict(loaded[m], common)
            n = len(fe.labels)
            fit_idx, out_idx = split_indices(n, 0.5, 0)
            if corruption is None:
                learned[m] = fit_weights(fe, fit_idx, "poly")
            own = fit_weights(fe, fit_idx, "poly")  # on this set's fit half
            all_idx = np.arange(n)
            for name, kind, classify in schedules(args.deltas, args.z, args.min_samples):
                r = replay(fe, classify, all_idx, None, kind != "reference")
                rows.append({"model": m, "set": sname, "schedule": name, "kind": kind, "weights": "uniform",
                             "images": "all", **r})
                if m in learned:
                    for wname, w in (("uniform", None), ("learned poly (clean fit half)", learned[m].weights),
                                     ("learned poly (this set's fit half)", own.weights)):
                        r = replay(fe, classify, out_idx, w, kind != "reference")
                        rows.append({"model": m, "set": sname, "schedule": name, "kind": kind, "weights": wname,
                                     "images": "held-out half", **r})
            full = next(r for r in rows if r["model"] == m and r["set"] == sname and r["kind"] == "full")
            entry[m] = full["accuracy"]
            entry[f"{m}_n"] = n
            _, rep = fit_and_report(fe, 1000, 0.5, 0)
            weights_report.append({"model": m, "set": sname, **rep})
            print(f"{MODELS[m]} {sname}: full {full['accuracy']:.2f}% on {n} images; held-out top-1 uniform "
                  f"{rep['kinds']['uniform']['heldout_top1']:.1f}, poly {rep['kinds']['poly']['heldout_top1']:.1f}, "
                  f"bins {rep['kinds']['bins']['heldout_top1']:.1f}", flush=True)
        entry["logreg"], entry["logreg_all359"] = logistic_regression(corruption, severity, sorted(common))
        robust.append(entry)

    # the target: anytime within target_points of full with target_saving x fewer evaluations, where full < 95%
    print("\n| model | set | weights, images | full (%) | rule | anytime (%) | evaluations / image | fewer | target met |")
    print("|---|---|---|---:|---|---:|---:|---:|---|")
    targets = []
    for r in rows:
        if not r["kind"].startswith("anytime") or r["weights"].startswith("learned poly (clean"):
            continue
        full = next(q for q in rows if q["model"] == r["model"] and q["set"] == r["set"] and q["kind"] == "full"
                    and q["images"] == r["images"] and q["weights"] == r["weights"])
        if full["accuracy"] >= 95.0:
            continue
        saving = full["evals_per_image"] / r["evals_per_image"]
        ok = abs(r["accuracy"] - full["accuracy"]) <= args.target_points and saving >= args.target_saving
        targets.append({"model": r["model"], "set": r["set"], "schedule": r["schedule"], "weights": r["weights"],
                        "images": r["images"], "full": full["accuracy"],
                        "accuracy": r["accuracy"], "evals_per_image": r["evals_per_image"], "saving": saving, "met": ok})
        print(f"| {MODELS[r['model']]} | {r['set']} | {r['weights']}, {r['images']} | {full['accuracy']:.2f} | {r['schedule'].replace('anytime ', '')} "
              f"| {r['accuracy']:.2f} | {r['evals_per_image']:.0f} | {saving:.1f}x | {'yes' if ok else 'no'} |")

    print("\n| set | digits-sd full (%) | digits-dit full (%) | logistic regression (subset) | logistic regression (all 359) |")
    print("|---|---:|---:|---:|---:|")
    for e in robust:
        print(f"| {e['set']} | {e['sd']:.2f} | {e['dit']:.2f} | {e['logreg']:.2f} | {e['logreg_all359']:.2f} |")

    print("\n| model | set | schedule | weights | images | top-1 (%) | evaluations / image |")
    print("|---|---|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {MODELS[r['model']]} | {r['set']} | {r['schedule']} | {r['weights']} | {r['images']} | "
              f"{r['accuracy']:.2f} | {r['evals_per_image']:.0f} |")

    print("\n| model | set | held-out top-1 uniform | poly (change) | bins (change) | ECE before -> after T (uniform) | chosen |")
    print("|---|---|---:|---:|---:|---|---|")
    for w in weights_report:
        k = w["kinds"]
        print(f"| {MODELS[w['model']]} | {w['set']} | {k['uniform']['heldout_top1']:.1f} | {k['poly']['heldout_top1']:.1f} "
              f"({k['poly']['heldout_top1'] - k['uniform']['heldout_top1']:+.1f}) | {k['bins']['heldout_top1']:.1f} "
              f"({k['bins']['heldout_top1'] - k['uniform']['heldout_top1']:+.1f}) | "
              f"{k['uniform']['heldout_ece_before']:.1f} -> {k['uniform']['heldout_ece_after']:.1f} | {w['chosen']} |")

    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out / "schedules_digits_c.json", {"rows": rows, "targets": targets}, __file__, argv)
    write_result(args.out / "robustness_digits_c.json", robust, __file__, argv)
    write_result(args.out / "timestep_weights_digits_c.json", weights_report, __file__, argv)
    if rows:
        plot_schedules(rows, args.out / "schedules_digits_c.png")
        plot_robustness(robust, args.out / "robustness_digits_c.png")
    print(f"saved to {args.out}")
    return {"rows": rows, "robust": robust, "targets": targets, "weights": weights_report}


if __name__ == "__main__":
    main()
