"""DiT classification cost: full per-class evaluation vs adaptive schedules, and DiT-XL/2 throughput.

`accuracy`: on the shipped digits DiT (digits test split), the reference's full evaluation (every class
× every timestep of --t_interval, one eval_prob_dit run per class, scored like print_dit_acc) against
adaptive runs (staged pruning and the statistical schedule): accuracy and forward passes per image.
`throughput`: DiT-XL/2-256 built from its published config with random weights, forward passes per
second through the scoring engine at a given batch size, on --device (cpu or cuda).

    OMP_NUM_THREADS=1 python benchmarks/dit_adaptive.py accuracy --model tiny
    python benchmarks/dit_adaptive.py throughput --device cpu --batch_size 4 --n_batches 2
    python benchmarks/dit_adaptive.py throughput --device cuda --batch_size 64 --n_batches 4

(On a CPU shared with other jobs, one thread per process avoids thread oversubscription, which slowed the
tiny model about tenfold.)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from lib import HelpFormatter, entry_script

# DiT-XL/2 (Peebles & Xie 2023): hidden 1152 = 16 heads × 72, depth 28, patch 2, learned sigma (out = 2 × 4);
# the transformer config of the diffusers pipeline facebook/DiT-XL-2-256 (latent 32 = 256 / 8).
DIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero", activation_fn="gelu-approximate",
                attention_bias=True, norm_elementwise_affine=False)
DEFAULT_SCHEDULES = ["2 1:20 100", "3 1:20 80", "3 1:10 100", "stat:200:10:3", "stat:200:10:2"]


def parse_schedule(text: str) -> dict:
    """'K1 K2:N1 N2' (staged pruning) or 'stat:MAX:MIN:Z' (statistical) -> eval_prob_dit flags."""
    if text.startswith("stat:"):
        _, max_samples, min_samples, z = text.split(":")
        return {"label": f"statistical max {max_samples}, min {min_samples}, z {z}",
                "flags": ["--schedule", "statistical", "--to_keep", "1", "--n_samples", max_samples,
                          "--min_samples", min_samples, "--z", z]}
    keep, samples = text.split(":")
    return {"label": f"keep {keep} / samples {samples}",
            "flags": ["--to_keep", *keep.split(), "--n_samples", *samples.split()]}


def accuracy_benchmark(args) -> list[dict]:
    """Full per-class evaluation vs adaptive schedules on the digits test split."""
    from diffusion_classifier.families.dit import resolve_dit_model
    from diffusion_classifier.schedules.staged import interval_timesteps
    from diffusion_classifier.tasks.per_class import load_per_class_scores, per_class_accuracy

    eval_prob_dit = entry_script("eval_prob_dit")

    model_dir = Path(resolve_dit_model(None, args.model))
    if not (model_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"no DiT pipeline at {model_dir}: expected its model_index.json")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="dit_bench_"))
    base = ["--model", args.model, "--dataset", "digits", "--split", "test", "--log_dir", str(log_dir),
            "--seed", str(args.seed), "--batch_size", str(args.batch_size), "--no_progress",
            "--image_batch", str(args.image_batch)]
    if args.imgs_to_eval:
        base += ["--imgs_to_eval", str(args.imgs_to_eval)]
    rows = []

    start = time.perf_counter()
    n_classes, folder = 10, None
    for cls in range(n_classes):
        res = eval_prob_dit.main(base + ["--cls", str(cls), "--t_interval", str(args.t_interval)])
        folder = Path(res["folder"])
    seconds = time.perf_counter() - start
    classes, images, scores, labels = load_per_class_scores(folder)
    full_acc = per_class_accuracy(scores, classes, [labels[i] for i in images])["L2"]
    full_passes = n_classes * len(interval_timesteps(args.t_interval))
    rows.append({"schedule": f"full per-class, t_interval {args.t_interval}", "accuracy": full_acc,
                 "passes": full_passes, "seconds": seconds / len(images), "n": len(images)})

    for text in args.schedules:
        sched = parse_schedule(text)
        start = time.perf_counter()
        res = eval_prob_dit.main(base + sched["flags"])
        seconds = time.perf_counter() - start
        n = res["done"] + res["skipped"]
        rows.append({"schedule": sched["label"], "accuracy": res["accuracy"],
                     "passes": res["evaluations"] / max(res["done"], 1), "seconds": seconds / max(res["done"], 1), "n": n})

    print(f"\ndigits test split, model {model_dir.name}, {rows[0]['n']} images, seed {args.seed}, batch {args.batch_size}")
    print("| schedule | accuracy % | forward passes / image | fewer passes than full | wall s / image |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['schedule']} | {r['accuracy']:.2f} | {r['passes']:.0f} | {full_passes / r['passes']:.1f}x | "
              f"{r['seconds']:.3f} |")
    return rows


def _duration(seconds: float) -> str:
    """'2.8 min' or '4.2 h'."""
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def throughput_benchmark(args) -> dict:
    """Forward passes per second of DiT-XL/2 (random weights) through the scoring engine."""
    from diffusers import DiTTransformer2DModel

    from diffusion_classifier.engine import Scorer
    from diffusion_classifier.noise import make_noise
    from diffusion_classifier.tasks.per_class import per_class_jobs
    from diffusion_classifier.vb import linear_betas

    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    latent = args.image_size // 8
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = DiTTransformer2DModel(sample_size=latent, **DIT_XL_2).to(device).eval().requires_grad_(False)
    if dtype != torch.float32:
        model = model.to(dtype)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())

    def denoiser(x_t, t, labels):
        return model(x_t, timestep=t, class_labels=labels).sample

    ac = torch.cumprod(1 - linear_betas(), 0)
    scorer = Scorer(denoiser, ac, make_noise(args.batch_size, (4, latent, latent), 0), device, dtype, args.batch_size)
    latents = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(1))
    conds = torch.tensor([207])
    n_passes = args.batch_size * args.n_batches  # the reference's 250 timesteps, cycled to fill n_batches batches
    timesteps = (list(range(2, 1000, 4)) * (n_passes // 250 + 1))[:n_passes]
    jobs = per_class_jobs(1, timesteps, 1, args.batch_size, False)
    # the first call pays for allocation and kernel selection (a full batch on GPU, one pass on CPU)
    warm = per_class_jobs(1, [500] * (args.batch_size if device.type == "cuda" else 1), 1, args.batch_size, False)
    scorer.evaluate(latents, conds, warm)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    scorer.evaluate(latents, conds, jobs)  # returns on the CPU: includes the final sync
    seconds = time.perf_counter() - t0
    rate = len(jobs) / seconds
    print(f"\nDiT-XL/2-{args.image_size} ({n_params / 1e6:.1f}M parameters, built in {build_s:.1f}s), {device}, {dtype}, "
          f"batch {args.batch_size}: {len(jobs)} forward passes in {seconds:.1f}s = {rate:.2f} passes/s; "
          f"250 timesteps × 1000 classes per image = {_duration(250_000 / rate)} per image")
    return {"params": n_params, "passes_per_s": rate, "batch_size": args.batch_size, "device": str(device)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="part", required=True, help="the measurement")
    a = sub.add_parser("accuracy", help="full per-class evaluation vs adaptive schedules on the digits DiT",
                       formatter_class=HelpFormatter)
    a.add_argument("--model", default="tiny", help="DiT pipeline folder ('tiny': the shipped digits DiT)")
    a.add_argument("--t_interval", type=int, default=5, help="full evaluation: timesteps range(t//2, 1000, t)")
    a.add_argument("--schedules", nargs="+", default=DEFAULT_SCHEDULES,
                   help="adaptive schedules: 'K1 K2:N1 N2' staged pruning, 'stat:MAX:MIN:Z' statistical")
    a.add_argument("--imgs_to_eval", type=int, default=None, help="first N test images (default: all)")
    a.add_argument("--batch_size", type=int, default=200, help="denoiser evaluations per batch")
    a.add_argument("--image_batch", type=int, default=8, help="images packed into shared batches")
    a.add_argument("--seed", type=int, default=0, help="noise seed")
    a.add_argument("--log_dir", type=Path, default=None, help="where run folders go (default: a fresh temporary folder)")
    t = sub.add_parser("throughput", help="DiT-XL/2 forward passes per second (random weights)",
                       formatter_class=HelpFormatter)
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    t.add_argument("--batch_size", type=int, default=4, help="forward passes per batch")
    t.add_argument("--n_batches", type=int, default=2, help="timed batches (after a warm-up)")
    t.add_argument("--image-size", "--image_size", dest="image_size", type=int, default=256, help="image size (latent = size / 8)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return accuracy_benchmark(args) if args.part == "accuracy" else throughput_benchmark(args)


if __name__ == "__main__":
    main()
