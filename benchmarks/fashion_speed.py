"""Denoiser evaluations per second of the Fashion-MNIST model architectures through the toolkit's scoring engine
(float32, batch 256, the CPU threads given): the sizes were chosen to classify at >= 500 evaluations/s on two cores.

Builds each architecture from its committed training settings with random weights (speed does not depend on
the weight values), saves it in its pipeline layout, loads it as users do, and times `Scorer.evaluate`.

    python benchmarks/fashion_speed.py --threads 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lib import RESULTS, HelpFormatter
from lib.results import write_result
from lib.scoring import model_and_conditions

from diffusion_classifier.engine import Jobs, Scorer
from diffusion_classifier.noise import make_noise
from diffusion_classifier.training import dit, flow, sd
from diffusion_classifier.training.data import training_data


def build(kind: str, out: Path) -> Path:
    """Write a (one-step) model of the kind's committed Fashion-MNIST architecture under out."""
    data = training_data("fashion_mnist")
    module = {"sd": sd, "dit": dit, "flow": flow}[kind]
    settings = dict(module.DATA_DEFAULTS["fashion_mnist"], steps=1, batch=2)  # one step: the architecture is what counts
    train = getattr(module, f"train_{kind}")  # train_sd, train_dit, train_flow
    folder = out / data.folders[kind]
    train(folder, data=data, images=(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long)), seed=0, **settings)
    return folder


def evaluations_per_second(folder: Path, batch: int, repeats: int) -> float:
    model, conds = model_and_conditions(folder, [f"a {w}" for w in "abcdefghij"])  # a DiT: class labels 0..9
    shape = model.latent_shape(model.native_size)
    scorer = Scorer(model.denoiser, model.make_objective(shape), make_noise(batch, shape, 0), "cpu", torch.float32, batch)
    x = torch.randn(1, *shape)
    jobs = Jobs.build([0] * batch, [i % 10 for i in range(batch)], [(37 * i) % 1000 for i in range(batch)],
                      list(range(batch)))
    scorer.evaluate(x, conds, jobs)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        scorer.evaluate(x, conds, jobs)
    return batch * repeats / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--batch", type=int, default=256, help="evaluations per denoiser call")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per model")
    p.add_argument("--kinds", nargs="+", default=["sd", "dit", "flow"], choices=["sd", "dit", "flow"], help="architectures")
    p.add_argument("--out", type=Path, default=RESULTS / "fashion_speed_cpu.json",
                   help="JSON output (the kinds timed now replace theirs, the others keep theirs)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            folder = build(kind, Path(tmp))
            rate = evaluations_per_second(folder, args.batch, args.repeats)
            params = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
            results[folder.name] = {"evaluations_per_s": rate, "safetensors_bytes": params, "threads": args.threads,
                                    "batch": args.batch, "dtype": "float32"}
            print(f"{folder.name}: {rate:.0f} evaluations/s ({params / 1e6:.1f} MB of safetensors)", flush=True)
    write_result(args.out, results, __file__, argv, merge=True)  # kinds not timed now keep their entry


if __name__ == "__main__":
    main()
