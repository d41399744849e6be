"""Which σ grid classifies best per evaluation on a flow-matching model (default: the shipped tiny-flow).

Grids (objectives.flow_sigmas): 'timesteps' = the reference's evenly spaced training timesteps mapped to σ by
the scheduler (its shift included), 'uniform_sigma' = evenly spaced σ. Each run scores every class at n
timesteps of the grid (no pruning) on the digits test split. `--shift S` evaluates as if the scheduler's
shift were S (the 'timesteps' grid moves towards σ = 1 as SD3's shift 3 does; 'uniform_sigma' ignores it).
Prints a markdown table; --json writes the numbers.

    python benchmarks/flow_grids.py --n_samples 50 --grids timesteps uniform_sigma --error_spaces native eps
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lib import ROOT, HelpFormatter
from lib.digits import digits_test, run
from lib.results import write_result

from diffusion_classifier.data.prompts import read_prompts
from diffusion_classifier.families import SD_VERSIONS, load_model
from diffusion_classifier.objectives import ERROR_SPACES, FLOW_GRIDS


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default=SD_VERSIONS["tiny-flow"], help="flow-matching pipeline folder")
    p.add_argument("--n_samples", type=int, nargs="+", default=[10, 20, 50], help="timesteps per class")
    p.add_argument("--grids", nargs="+", default=list(FLOW_GRIDS), choices=list(FLOW_GRIDS), help="σ grids to compare")
    p.add_argument("--shift", type=float, nargs="+", default=[None], help="evaluate with these scheduler shifts (default: the model's own)")
    p.add_argument("--error_spaces", nargs="+", default=["native"], choices=list(ERROR_SPACES),
                   help="compare velocities (native, the flow default) and/or ε̂ with ε")
    p.add_argument("--loss", default="l2", choices=["l2", "l1", "huber"], help="error between prediction and target")
    p.add_argument("--batch_size", type=int, default=500, help="denoiser evaluations per batch")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)

    model = load_model(args.model)
    own_shift = model.scheduler_config.get("shift", 1.0)
    table = read_prompts(ROOT / "prompts" / "digits_prompts.csv")
    conds = model.encode_prompts(table.prompts)
    latents, labels = digits_test(model, args.limit)
    rows = []
    for shift in args.shift:
        model.scheduler_config = dict(model.scheduler_config, shift=own_shift if shift is None else shift)
        for grid in args.grids:
            if grid == "uniform_sigma" and shift not in (None, own_shift) and len(args.shift) > 1:
                continue  # the uniform grid does not depend on the shift
            for n in args.n_samples:
                for space in args.error_spaces:
                    spec = {"to_keep": [1], "n_samples": [n]}
                    r = run(model, conds, table.classidx, latents, labels, spec, args.batch_size, args.seed, args.loss,
                            flow_grid=grid, error_space=space)
                    r.update(grid=grid, error_space=space, n_samples=n, shift=model.scheduler_config["shift"])
                    rows.append(r)
                    print(r, flush=True)
    print("\n| grid | error space | shift | timesteps | top-1 (%) | evaluations / image |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['grid']} | {r['error_space']} | {r['shift']:g} | {r['n_samples']} | {r['accuracy']:.2f} "
              f"| {r['evals_per_image']:.0f} |")
    if args.json:
        write_result(args.json, rows, __file__, argv)
    return rows


if __name__ == "__main__":
    main()
