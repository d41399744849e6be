"""Evaluations per second of the real SDXL, SD3.5 and Flux.1 denoisers through the engine, random weights.

Each named architecture is built from its published config (lib/family_configs.py) with random weights
(speed does not depend on them) and timed through the scoring engine with its family's denoiser and
objective (packing, time ids, σ), with random prompt embeddings of the real shapes. Models whose
weights exceed --max_gib are built with a common fraction of their blocks, labelled as such; their
full-depth figure is an estimate that assumes time proportional to the number of blocks.

    python benchmarks/architectures.py --arch sdxl sd3.5-medium sd3.5-large flux-dev --img_size 128 --batch_size 1 \
        --n_batches 2 --threads 1 --max_gib 6 --json benchmarks/results/architectures_cpu.json
"""
from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from lib import HelpFormatter, family_configs
from lib.results import write_result
from lib.timing import time_runs

from diffusion_classifier.engine import Conditions, Jobs, Scorer
from diffusion_classifier.loading import DTYPES, VAE
from diffusion_classifier.noise import make_noise
from diffusion_classifier.vb import alphas_cumprod_from_config

ARCHS = {  # name -> (family, diffusers class, config, blocks config keys, scheduler config, text shapes)
    "sdxl": ("sdxl", "UNet2DConditionModel", "SDXL_UNET", (), "SDXL_SCHEDULER", "SDXL_TEXT"),
    "sd3.5-medium": ("sd3", "SD3Transformer2DModel", "SD35_MEDIUM_TRANSFORMER", ("num_layers",), "SD3_SCHEDULER", "SD3_TEXT"),
    "sd3.5-large": ("sd3", "SD3Transformer2DModel", "SD35_LARGE_TRANSFORMER", ("num_layers",), "SD3_SCHEDULER", "SD3_TEXT"),
    "flux-dev": ("flux", "FluxTransformer2DModel", "FLUX1_DEV_TRANSFORMER", ("num_layers", "num_single_layers"),
                 "FLUX1_DEV_SCHEDULER", "FLUX1_TEXT"),
}


def n_params(cls, config: dict) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return sum(p.numel() for p in cls.from_config(config).parameters())


def depth_for_budget(cls, config: dict, keys: tuple, itemsize: int, max_gib: float) -> tuple[dict, float]:
    """The config, its blocks scaled down by a common fraction until the weights fit max_gib; and the fraction."""
    fraction = 1.0
    cfg = dict(config)
    while keys and n_params(cls, cfg) * itemsize / 2**30 > max_gib and fraction > 0.02:
        fraction *= 0.8
        cfg = {**config, **{k: max(1, round(config[k] * fraction)) for k in keys}}
    blocks = sum(config[k] for k in keys) if keys else 1
    return cfg, (sum(cfg[k] for k in keys) / blocks if keys else 1.0)


def arch_model(name: str, img_size: int, dtype: torch.dtype, device: torch.device, max_gib: float, seed: int = 0):
    """(family model with a random backbone, conditions, latent shape, facts) for one --arch."""
    import diffusers

    family, cls_name, cfg_name, keys, sched_name, text_name = ARCHS[name]
    cls = getattr(diffusers, cls_name)
    full = getattr(family_configs, cfg_name)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    n_full = n_params(cls, full)
    cfg, depth = depth_for_budget(cls, full, keys, itemsize, max_gib)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in the benchmark dtype: no float32 copy at this size
    try:
        torch.manual_seed(seed)
        with torch.device(device):
            net = cls.from_config(cfg).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)
    n_built = sum(p.numel() for p in net.parameters())
    geometry = VAE(None, cfg["in_channels"] // (4 if family == "flux" else 1))
    geometry.downsample = family_configs.VAE_DOWNSAMPLE  # latents of the real VAE: 8x smaller than the image
    scheduler = dict(getattr(family_configs, sched_name))
    if family == "sdxl":
        from diffusion_classifier.families.sdxl import SDXLModel

        model = SDXLModel(net, (None, None), (None, None), geometry, alphas_cumprod_from_config(scheduler), device,
                          dtype, f"{name} (random)", scheduler)
    elif family == "sd3":
        from diffusion_classifier.families.sd3 import SD3Model

        model = SD3Model(net, (None,) * 3, (None,) * 3, geometry, scheduler, device, dtype, f"{name} (random)")
    else:
        from diffusion_classifier.families.flux import FluxModel

        model = FluxModel(net, (None, None), (None, None), geometry, scheduler, device, dtype, f"{name} (random)")
    text = getattr(family_configs, text_name)
    g = torch.Generator().manual_seed(seed + 1)
    conds = Conditions(prompt_embeds=torch.randn(2, text["tokens"], text["hidden"], generator=g).to(dtype),
                       pooled=torch.randn(2, text["pooled"], generator=g).to(dtype))
    facts = {"arch": name, "params_full": n_full, "params_built": n_built, "depth_fraction": depth,
             "blocks": {k: cfg[k] for k in keys}, "weights_gib": n_built * itemsize / 2**30}
    return model, conds, model.latent_shape(img_size), facts


def n_built_str(facts: dict) -> str:
    s = f"{facts['params_built'] / 1e9:.2f}B params built"
    return s + (f" of {facts['params_full'] / 1e9:.2f}B" if facts["params_built"] != facts["params_full"] else "")


def arch_benchmark(name: str, img_size: int, dtype: torch.dtype, device: torch.device, batch_size: int,
                   n_batches: int, max_gib: float, seed: int = 0) -> dict:
    """Evaluations per second of one real architecture through the engine (Scorer + family denoiser + objective)."""
    t0 = time.perf_counter()
    model, conds, shape, facts = arch_model(name, img_size, dtype, device, max_gib, seed)
    build_s = time.perf_counter() - t0
    n = batch_size * (n_batches + 1)  # one untimed batch first
    scorer = Scorer(model.denoiser, model.make_objective(shape), make_noise(n, shape, seed), device, dtype, batch_size)
    latents = make_noise(1, shape, seed + 2)
    ts = torch.linspace(0, 999, n).long()
    jobs = Jobs.build(torch.zeros(n), torch.arange(n) % 2, ts, torch.arange(n))
    first = Jobs.build(*(getattr(jobs, k)[:batch_size] for k in ("image", "cond", "t", "noise")))
    rest = Jobs.build(*(getattr(jobs, k)[batch_size:] for k in ("image", "cond", "t", "noise")))
    scorer.evaluate(latents, conds, first)
    times, errors = time_runs(lambda: scorer.evaluate(latents, conds, rest), device, 0, 1)
    assert torch.isfinite(errors.float()).all(), f"{name}: non-finite errors"
    rate = len(rest) / times[0]
    row = {**facts, "img_size": img_size, "latent_shape": list(shape), "dtype": str(dtype), "batch_size": batch_size,
           "evaluations": len(rest), "seconds": times[0], "evals_per_s": rate, "build_s": build_s,
           "objective": model.make_objective(shape).prediction_type}
    if facts["depth_fraction"] < 1:
        row["evals_per_s_full_depth_estimate"] = rate * facts["depth_fraction"]  # time ∝ number of blocks
    label = name if facts["depth_fraction"] == 1 else f"{name} LAYER-REDUCED {facts['blocks']}"
    est = (f"; full depth ≈ {row['evals_per_s_full_depth_estimate']:.3g} evals/s (linear in blocks, an estimate)"
           if "evals_per_s_full_depth_estimate" in row else "")
    print(f"  {label}: {n_built_str(facts)}, {img_size}px latents {tuple(shape)}, {dtype}, batch {batch_size}: "
          f"{len(rest)} evaluations in {times[0]:.2f} s = {rate:.3g} evals/s{est}", flush=True)
    del model, scorer
    gc.collect()
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS), help="architectures to time")
    p.add_argument("--img_size", type=int, default=128, help="image size (latents 8x smaller, as with the real VAEs)")
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES), help="weights and activations dtype")
    p.add_argument("--device", default=None, help="torch device; default cuda if available, else cpu")
    p.add_argument("--batch_size", type=int, default=2, help="denoiser evaluations per batch")
    p.add_argument("--n_batches", type=int, default=2, help="timed batches per architecture (after one untimed)")
    p.add_argument("--max_gib", type=float, default=12.0,
                   help="largest weights built; deeper models keep a fraction of their blocks (labelled)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads; default torch's choice")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, latents and noise bank")
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"real architectures, random weights; {device}, {torch.get_num_threads()} threads, {dtype}, {args.img_size}px, "
          f"batch {args.batch_size}, {args.n_batches} timed batches; weights capped at {args.max_gib} GiB "
          f"(deeper models are built with fewer blocks); torch {torch.__version__}", flush=True)
    rows = [arch_benchmark(a, args.img_size, dtype, device, args.batch_size, args.n_batches, args.max_gib, args.seed)
            for a in args.arch]
    out = {"archs": rows, "settings": {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}}
    if args.json:
        write_result(args.json, out, __file__, argv, sort_keys=True)
    return out


if __name__ == "__main__":
    main()
