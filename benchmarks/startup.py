"""Start-up time: from process start to the first denoiser evaluation of a script's run.

Runs the command in a fresh Python process that stops at the first `Scorer.evaluate` call and
reports wall seconds since the process was launched and the process's CPU seconds up to then
(imports, model and dataset loading, prompt encoding). With --other CHECKOUT the same command is
timed in another checkout too (e.g. an older commit), interleaved, the median of --repeats each.

    python benchmarks/startup.py
    python benchmarks/startup.py --other /path/to/older/checkout --repeats 3 --json startup.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lib import ROOT, HelpFormatter
from lib.results import write_result

DEFAULT_COMMAND = ("eval_prob_adaptive.py --version tiny --dataset digits --split test --to_keep 5 1 "
                   "--n_samples 10 50")

# run inside the timed process: stop at the first denoiser evaluation
_HOOK = r"""
import os, sys, time, runpy
import diffusion_classifier.engine as engine
def _first(self, *args, **kwargs):
    print(f"FIRST_EVALUATION {time.time():.6f} {time.process_time():.6f}", flush=True)
    os._exit(0)
engine.Scorer.evaluate = _first
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
raise SystemExit("the script ended without evaluating the denoiser")
"""


def time_to_first_evaluation(checkout: Path, command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds from launch, CPU seconds of the process) until its first denoiser evaluation."""
    env = dict(env, PYTHONPATH=str(checkout))
    with tempfile.TemporaryDirectory() as log_dir:
        env["LOG_DIR"] = log_dir
        start = time.time()
        done = subprocess.run([sys.executable, "-c", _HOOK, *command], cwd=checkout, env=env,
                              capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("FIRST_EVALUATION")]
    if not lines:
        raise RuntimeError(f"no denoiser evaluation in {' '.join(command)} ({checkout}):\n{done.stderr[-3000:]}")
    _, at, cpu = lines[-1].split()
    return float(at) - start, float(cpu)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--command", default=DEFAULT_COMMAND, help="script and flags, run from each checkout's root")
    p.add_argument("--other", type=Path, default=None, help="another checkout to time the same command in")
    p.add_argument("--repeats", type=int, default=3, help="runs per checkout (the median counts)")
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    checkouts = {"this": ROOT} | ({"other": args.other.resolve()} if args.other else {})
    runs = {name: {"wall_s": [], "cpu_s": []} for name in checkouts}
    for _ in range(args.repeats):
        for name, checkout in checkouts.items():
            wall, cpu = time_to_first_evaluation(checkout, args.command.split(), env)
            runs[name]["wall_s"].append(wall)
            runs[name]["cpu_s"].append(cpu)
            print(f"  {name:<5} {wall:7.2f} s wall, {cpu:6.2f} s CPU to the first evaluation", flush=True)
    out = {"command": args.command, "checkouts": {k: str(v) for k, v in checkouts.items()}, "runs": runs}
    for name, r in runs.items():
        r["median_wall_s"], r["median_cpu_s"] = statistics.median(r["wall_s"]), statistics.median(r["cpu_s"])
        print(f"{name}: median {r['median_wall_s']:.2f} s wall, {r['median_cpu_s']:.2f} s CPU ({checkouts[name]})")
    if args.json:
        write_result(args.json, out, __file__, argv)
    return out


if __name__ == "__main__":
    main()
