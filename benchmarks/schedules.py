"""Evaluations per image vs accuracy on the digits test split: reference schedules, full, statistical.

The reference-style schedule for a 10-class set is CIFAR-10's (keep 5 1 / samples 50 500, 2750
evaluations per image). Prints a markdown table with each schedule's saving against it, and saves
accuracy vs evaluations per image as a PNG (benchmarks/results/schedules.{png,json}).

    python benchmarks/schedules.py
    python benchmarks/schedules.py --corrupted    (runs benchmarks/schedules_digits_c.py with the other flags)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from lib import RESULTS, ROOT, HelpFormatter
from lib.digits import describe, digits_test, markdown_table, run
from lib.results import write_result

from diffusion_classifier.data.prompts import read_prompts
from diffusion_classifier.families import SD_VERSIONS
from diffusion_classifier.families.sd import load_text_conditional

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
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--corrupted" in argv:  # another benchmark, in its own process, with the other flags
        script = Path(__file__).with_name("schedules_digits_c.py")
        done = subprocess.run([sys.executable, str(script), *(a for a in argv if a != "--corrupted")])
        if done.returncode:
            raise SystemExit(done.returncode)
        return None
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--corrupted", action="store_true",
                   help="replay every schedule on the digits_c records instead: runs benchmarks/schedules_digits_c.py "
                        "with the other flags (see its --help)")
    p.add_argument("--z", nargs="+", type=float, default=[1.0, 2.0, 3.0], help="z values of the statistical schedule")
    p.add_argument("--max_samples", type=int, default=500, help="timestep budget of the statistical schedule")
    p.add_argument("--min_samples", type=int, default=10, help="timesteps before the statistical schedule first prunes")
    p.add_argument("--loss", default="l2", choices=["l2", "l1", "huber"], help="error between ε and ε̂")
    p.add_argument("--batch_size", type=int, default=500, help="denoiser evaluations per batch")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the PNG and JSON")
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
    write_result(args.out / "schedules.json", [{"schedule": n, "kind": k, **r} for n, r, k in rows], __file__, argv)
    print(f"saved {args.out / 'schedules.png'}")
    return rows


if __name__ == "__main__":
    main()
