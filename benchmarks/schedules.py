"""Evaluations per image vs accuracy on the digits test split: reference schedules, full, statistical.

The reference-style schedule for a 10-class set is CIFAR-10's (keep 5 1 / samples 50 500, 2750
evaluations per image). Prints a markdown table with each schedule's saving against it, and saves
accuracy vs evaluations per image as a PNG.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import ROOT, describe, digits_test, markdown_table, run

from diffusion_classifier.families import SD_VERSIONS
from diffusion_classifier.families.sd import load_text_conditional
from diffusion_classifier.data.prompts import read_prompts

REFERENCE = {"to_keep": [5, 1], "n_samples": [50, 500]}
SCHEDULES = [
    REFERENCE,
    {"to_keep": [5, 1], "n_samples": [10, 50]},
    {"to_keep": [1], "n_samples": [100]},  # full: every class at every timestep
]


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind, marker in (("reference", "s"), ("statistical", "o")):
        pts = [(r["evals_per_image"], r["accuracy"], name) for name, r, k in rows if k == kind]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=kind, linestyle="-" if kind == "statistical" else "none")
            for x, y, name in pts:
                ax.annotate(name.split(":")[-1].strip().replace("statistical ", ""), (x, y), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set_xlabel("denoiser evaluations per image (log)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("digits test split, shipped tiny text-conditional model")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv=None):
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if "--corrupted" in argv:
        from schedules_digits_c import main as corrupted_main

        return corrupted_main([a for a in argv if a != "--corrupted"])
    p = argparse.ArgumentParser(description=__doc__ + "\n--corrupted: the digits_c replay benchmark "
                                "(benchmarks/schedules_digits_c.py, its own flags)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--z", nargs="+", type=float, default=[1.0, 2.0, 3.0], help="z values of the statistical schedule")
    p.add_argument("--max_samples", type=int, default=500, help="timestep budget of the statistical schedule")
    p.add_argument("--min_samples", type=int, default=10, help="timesteps before the statistical schedule first prunes")
    p.add_argument("--loss", default="l2", choices=["l2", "l1", "huber"], help="error between ε and ε̂")
    p.add_argument("--batch_size", type=int, default=500, help="denoiser evaluations per batch")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for the PNG and JSON")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    model = load_text_conditional(SD_VERSIONS["tiny"])
    table = read_prompts(ROOT / "prompts" / "digits_prompts.csv")
    conds = model.encode_prompts(table.prompts)
    latents, labels = digits_test(model, args.limit)
    specs = [(s, "reference") for s in SCHEDULES]
    specs += [({"z": z, "max_samples": args.max_samples, "min_samples": args.min_samples}, "statistical") for z in args.z]
    rows = []
    for spec, kind in specs:
        r = run(model, conds, table.classidx, latents, labels, spec, args.batch_size, args.seed, args.loss)
        rows.append((describe(spec), r, kind))
        print(f"{describe(spec)}: {r}", flush=True)
    ref = rows[0][1]
    print()
    print(markdown_table([(name, r) for name, r, _ in rows]))
    print()
    print(f"against the reference-style schedule ({describe(REFERENCE)}: {ref['accuracy']:.2f}%, "
          f"{ref['evals_per_image']:.0f} evaluations per image):")
    for name, r, kind in rows[1:]:
        print(f"  {name}: {ref['evals_per_image'] / r['evals_per_image']:.2f}x fewer evaluations, "
              f"accuracy {r['accuracy'] - ref['accuracy']:+.2f} points")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out / "schedules.png")
    (args.out / "schedules.json").write_text(json.dumps([{"schedule": n, "kind": k, **r} for n, r, k in rows], indent=2))
    print(f"saved {args.out / 'schedules.png'}")
    return rows


if __name__ == "__main__":
    main()
