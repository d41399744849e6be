"""Denoiser evaluations per second: the package's engine against the reference's per-image loop.

Both run in one process on the same model, images, noise, schedule and dtype. The reference loop
classifies one image at a time, in batches of 32 jobs, with a host-device sync per batch; the engine
(`adaptive_classify` + `Scorer.evaluate`) packs the jobs of several images into larger batches and
syncs once per stage. It prints evaluations per second of each, their ratio, model FLOPs per
evaluation, achieved FLOP/s (and, on CUDA, the fraction of the GPU's peak and the peak memory), and
checks that both give the same predictions and errors. Settings are timed interleaved (each repeat
runs every one in turn), so a change in machine load hits them all alike.

    python benchmarks/throughput.py --model tiny
    python benchmarks/throughput.py --model sd2 --img_size 128 --n_images 2 --n_prompts 4 --to_keep 2 1 --n_samples 1 2
    python benchmarks/throughput.py --model sd2 --device cuda --dtype float16 --batch_size 32 64 128
    python benchmarks/throughput.py --arch sdxl sd3.5-medium sd3.5-large flux-dev --img_size 128 --dtype bfloat16

With --arch, each named architecture (SDXL UNet, SD3.5 transformers, Flux.1 transformer) is built from
its published config (benchmarks/family_configs.py) with random weights and timed through the
engine and its family's denoiser and objective: evaluations per second, nothing to compare with.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout

from diffusion_classifier.adaptive import adaptive_classify, n_evaluations  # noqa: E402
from diffusion_classifier.engine import Scorer  # noqa: E402
from diffusion_classifier.models import DTYPES, SD_VERSIONS, default_dtype  # noqa: E402
from diffusion_classifier.noise import make_noise  # noqa: E402
from diffusion_classifier.statistical import make_schedule  # noqa: E402

_spec = importlib.util.spec_from_file_location("sd2_configs", HERE / "sd2_configs.py")
configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(configs)
_spec = importlib.util.spec_from_file_location("family_configs", HERE / "family_configs.py")
family_configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(family_configs)

# dense fp16/bf16 tensor-core and fp32 (non-tensor-core) peaks in TFLOP/s; the first name that matches wins
PEAK_TFLOPS = {
    "H100 PCIE": {"half": 756.0, "float32": 51.0},
    "H200": {"half": 989.0, "float32": 67.0},
    "H100": {"half": 989.0, "float32": 67.0},
    "A100": {"half": 312.0, "float32": 19.5},
}


@dataclass
class Workload:
    """Everything both loops share: the UNet, latents, prompt embeddings, ᾱ table and noise bank."""

    unet: torch.nn.Module
    latents: torch.Tensor  # (N, C, H, W) float32, on the CPU
    conds: torch.Tensor  # (K, L, D) in the model dtype
    alphas_cumprod: torch.Tensor  # (T,) float64
    noise: torch.Tensor  # (rows, C, H, W) float32
    labels: list[int] | None  # true classes of the images, when they are real ones
    description: str


# ---------------------------------------------------------------------------------------------
# the reference's per-image loop, re-created from its description


def reference_errors(unet, latent, text_embeds, alphas_cumprod, noise, ts, noise_idxs, text_idxs,
                     batch_size: int = 32, loss: str = "l2") -> torch.Tensor:
    """One image's errors for a list of (t, noise index, prompt index) jobs, batch by batch: (J,) float32.

    `latent` (1,C,H,W), `noise` and `alphas_cumprod` are already on the device in the model dtype, as
    in the reference; each batch's errors are copied to the host before the next batch starts.
    """
    device = latent.device
    out = torch.zeros(len(ts))
    for start in range(0, len(ts), batch_size):
        end = min(start + batch_size, len(ts))
        t = torch.tensor(ts[start:end], device=device)
        eps = noise[noise_idxs[start:end]]  # (B, C, H, W)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noised = latent * a**0.5 + eps * (1 - a) ** 0.5
        # the reference passed t as half in fp16 (exact up to 2048); int64 keeps bf16 exact too
        pred = unet(noised, t, encoder_hidden_states=text_embeds[text_idxs[start:end]]).sample
        if loss == "l2":
            err = F.mse_loss(eps, pred, reduction="none").mean(dim=(1, 2, 3))
        elif loss == "l1":
            err = F.l1_loss(eps, pred, reduction="none").mean(dim=(1, 2, 3))
        elif loss == "huber":
            err = F.huber_loss(eps, pred, reduction="none", delta=1.0).mean(dim=(1, 2, 3))
        else:
            raise ValueError(f"loss must be l2, l1 or huber, got {loss!r}")
        out[start:end] = err.cpu()  # host-device sync per batch
    return out


def reference_image(unet, latent, text_embeds, alphas_cumprod, noise, to_keep, n_samples, n_trials: int = 1,
                    batch_size: int = 32, loss: str = "l2", T: int = 1000) -> tuple[int, dict]:
    """The reference's adaptive evaluation of one image: (predicted prompt index, {prompt: {'t', 'pred_errors'}})."""
    m = max(n_samples)
    grid = list(range(T // m // 2, T, T // m))[:m]
    evaluated: set[int] = set()
    remaining = list(range(len(text_embeds)))
    data: dict[int, dict[str, torch.Tensor]] = {}
    for n, keep in zip(n_samples, to_keep):
        step = len(grid) // n
        new_ts = [t for t in grid[step // 2 :: step][:n] if t not in evaluated]
        ts, noise_idxs, text_idxs = [], [], []
        for p in remaining:
            for t_idx, t in enumerate(new_ts, start=len(evaluated)):
                ts += [t] * n_trials
                noise_idxs += list(range(n_trials * t_idx, n_trials * (t_idx + 1)))
                text_idxs += [p] * n_trials
        evaluated.update(new_ts)
        errors = reference_errors(unet, latent, text_embeds, alphas_cumprod, noise, ts, noise_idxs, text_idxs,
                                  batch_size, loss)
        ts_all, idx_all = torch.tensor(ts, dtype=torch.long), torch.tensor(text_idxs, dtype=torch.long)
        for p in remaining:
            mask = idx_all == p
            if p in data:
                data[p] = {"t": torch.cat([data[p]["t"], ts_all[mask]]),
                           "pred_errors": torch.cat([data[p]["pred_errors"], errors[mask]])}
            else:
                data[p] = {"t": ts_all[mask], "pred_errors": errors[mask]}
        scores = torch.stack([-data[p]["pred_errors"].mean() for p in remaining])
        best = torch.topk(scores, k=keep).indices.tolist()
        remaining = [remaining[i] for i in best]
    assert len(remaining) == 1
    return remaining[0], data


def reference_classify(unet, latents, conds, alphas_cumprod, noise, to_keep, n_samples, n_trials: int = 1,
                       batch_size: int = 32, loss: str = "l2", device=torch.device("cpu"),
                       dtype: torch.dtype = torch.float32) -> list[tuple[int, dict]]:
    """The reference's loop over a dataset: one image at a time, everything in the model dtype."""
    device = torch.device(device)
    ab = alphas_cumprod.to(device=device, dtype=dtype)
    bank = noise.to(device=device, dtype=dtype)
    embeds = conds.to(device=device, dtype=dtype)
    results = []
    with torch.inference_mode():
        for i in range(len(latents)):
            latent = latents[i : i + 1].to(device=device, dtype=dtype)
            results.append(reference_image(unet, latent, embeds, ab, bank, to_keep, n_samples, n_trials,
                                           batch_size, loss, len(alphas_cumprod)))
    return results


# ---------------------------------------------------------------------------------------------
# the engine


def unet_denoiser(unet: Callable) -> Callable:
    """The engine's denoiser interface over a diffusers UNet (or its compiled wrapper)."""
    return lambda x_t, t, cond: unet(x_t, t, encoder_hidden_states=cond).sample


def engine_classify(scorer: Scorer, latents, conds, to_keep, n_samples, n_trials: int = 1, image_batch: int = 1,
                    loss: str = "l2", T: int = 1000) -> list:
    """adaptive_classify over groups of `image_batch` images, each group's jobs packed into shared batches."""
    results = []
    for start in range(0, len(latents), image_batch):
        group = latents[start : start + image_batch]
        evaluate = lambda jobs, group=group: scorer.evaluate(group, conds, jobs, loss)  # noqa: E731
        results += adaptive_classify(evaluate, len(group), len(conds), to_keep, n_samples, n_trials, T)
    return results


def compare_results(reference: list[tuple[int, dict]], engine: list) -> dict:
    """How far the engine's predictions and errors are from the reference loop's."""
    same, diff, scale, compared = 0, 0.0, 0.0, 0
    for (pred, data), res in zip(reference, engine):
        same += int(pred == res.pred)
        for c, entry in data.items():
            if c not in res.errors:
                continue  # the two pruned differently at an earlier stage
            a, b = entry["pred_errors"].double(), res.errors[c]["pred_errors"].double()
            n = min(len(a), len(b))
            assert torch.equal(entry["t"][:n], res.errors[c]["t"][:n]), "timesteps out of order"
            if n:
                diff = max(diff, (a[:n] - b[:n]).abs().max().item())
                scale = max(scale, a[:n].abs().max().item())
                compared += n
    return {"same_predictions": same, "n_images": len(reference), "max_abs_diff": diff,
            "max_rel_diff": diff / scale if scale else 0.0, "errors_compared": compared}


TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}  # relative, on the errors


# ---------------------------------------------------------------------------------------------
# FLOPs, timing, device facts


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    b, h, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv  # Q·Kᵀ and softmax(·)·V


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of one call of fn, from torch's FLOP counter, CPU attention included."""
    from torch.utils.flop_counter import FlopCounterMode

    # the CPU flash-attention kernel is missing from torch's FLOP table
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    """Dense peak TFLOP/s of a known GPU for this dtype, or None."""
    kind = "float32" if dtype == torch.float32 else "half"
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name.upper():
            return peaks[kind]
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> tuple[list[float], object]:
    """Wall times of `repeats` calls after `warmup` untimed ones, and the last call's output."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times, out


def set_attention(unet: torch.nn.Module, kind: str) -> None:
    """sdpa: torch's fused scaled_dot_product_attention; classic: explicit bmm + softmax."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if kind not in ("sdpa", "classic"):
        raise ValueError(f"attention must be 'sdpa' or 'classic', got {kind!r}")
    unet.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


# ---------------------------------------------------------------------------------------------
# workloads


def _alphas_cumprod(scheduler: dict) -> torch.Tensor:
    from diffusion_classifier.vb import betas_from_config

    return torch.cumprod(1.0 - betas_from_config(scheduler), 0)


def _build_unet(config: dict, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: fast on a GPU, no host copy
        unet = UNet2DConditionModel.from_config(config)
    if dtype != torch.float32:
        unet = unet.to(dtype=dtype)
    return unet.eval().requires_grad_(False)


def sd2_workload(img_size: int, n_images: int, n_prompts: int, rows: int, device: torch.device,
                 dtype: torch.dtype, seed: int = 0, encode_text: bool = False) -> Workload:
    """The Stable Diffusion 2 base UNet with random weights, random latents and prompt embeddings."""
    if img_size % configs.SD2_BASE_VAE_DOWNSAMPLE:
        raise ValueError(f"--img_size must be a multiple of {configs.SD2_BASE_VAE_DOWNSAMPLE} for SD2, got {img_size}")
    s = img_size // configs.SD2_BASE_VAE_DOWNSAMPLE
    shape = (configs.SD2_BASE_LATENT_CHANNELS, s, s)
    unet = _build_unet(configs.SD2_BASE_UNET, device, dtype, seed)
    text = configs.SD2_BASE_TEXT_ENCODER
    g = torch.Generator().manual_seed(seed + 2)
    if encode_text:
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(seed + 3)
        with torch.device(device):
            encoder = CLIPTextModel(CLIPTextConfig(**text)).to(dtype).eval()
        ids = torch.randint(0, text["vocab_size"], (n_prompts, text["max_position_embeddings"]), generator=g)
        with torch.inference_mode():
            conds = encoder(ids.to(device))[0].to(dtype).cpu()
        del encoder
    else:
        conds = torch.randn(n_prompts, text["max_position_embeddings"], text["hidden_size"], generator=g).to(dtype)
    return Workload(unet, make_noise(n_images, shape, seed + 1), conds, _alphas_cumprod(configs.SD2_BASE_SCHEDULER),
                    make_noise(rows, shape, seed), None,
                    f"Stable Diffusion 2 base UNet (random weights), {img_size}px images, latents {shape}")


def tiny_workload(n_images: int, n_prompts: int, rows: int, device: torch.device, dtype: torch.dtype,
                  seed: int = 0) -> Workload:
    """The shipped digits model on test digits; a same-shaped random model if it is not there yet."""
    folder = Path(SD_VERSIONS["tiny"])
    if (folder / "model_index.json").is_file():
        from diffusion_classifier.digits import load_digits_arrays
        from diffusion_classifier.models import load_text_conditional
        from diffusion_classifier.prompts import read_prompts

        model = load_text_conditional(str(folder), device, dtype)
        table = read_prompts(ROOT / "prompts" / "digits_prompts.csv")
        if n_prompts > len(table.prompts):
            raise ValueError(f"--n_prompts must be at most the {len(table.prompts)} digit prompts, got {n_prompts}")
        images, labels = load_digits_arrays("test")
        pixels = torch.from_numpy(images[:n_images]).float().div(255).mul(2).sub(1)  # (N, 8, 8) in [-1, 1]
        pixels = pixels[:, None].expand(-1, 3, -1, -1)  # grey -> RGB
        latents = model.encode_images(pixels.to(device)).cpu()
        conds = model.encode_prompts(table.prompts[:n_prompts]).cpu()
        return Workload(model.unet, latents, conds, model.alphas_cumprod,
                        make_noise(rows, tuple(latents.shape[1:]), seed), labels[:n_images].tolist(),
                        f"shipped digits model {folder.name}, the first {len(latents)} test digits")
    print(f"the shipped digits model {folder} does not exist yet: using a random model with its shapes instead")
    cfg = configs.TINY_DIGITS_UNET
    shape = (cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
    g = torch.Generator().manual_seed(seed + 2)
    conds = torch.randn(n_prompts, *configs.TINY_DIGITS_CONTEXT, generator=g).to(dtype)
    return Workload(_build_unet(cfg, device, dtype, seed), make_noise(n_images, shape, seed + 1), conds,
                    _alphas_cumprod(configs.SD2_BASE_SCHEDULER), make_noise(rows, shape, seed), None,
                    "random stand-in for the digits model, pixel space 3x8x8")


def folder_workload(folder: str, img_size: int | None, n_images: int, n_prompts: int, rows: int,
                    device: torch.device, dtype: torch.dtype, seed: int = 0) -> Workload:
    """Any Stable-Diffusion-format folder: random latents, prompts 'a photo of class i.'."""
    from diffusion_classifier.models import load_text_conditional

    model = load_text_conditional(folder, device, dtype)
    shape = model.latent_shape(img_size or model.native_size)
    conds = model.encode_prompts([f"a photo of class {i}." for i in range(n_prompts)]).cpu()
    return Workload(model.unet, make_noise(n_images, shape, seed + 1), conds, model.alphas_cumprod,
                    make_noise(rows, shape, seed), None, f"model folder {folder}, latents {shape}")


# ---------------------------------------------------------------------------------------------
# the benchmark


def _fmt_rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.2f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


def _row(name: str, batch: int, image_batch: int, times: list[float], evaluations: int, flops_per_eval: int,
         peak: float | None) -> dict:
    seconds = statistics.median(times)
    rate = evaluations / seconds
    row = {"variant": name, "batch_size": batch, "image_batch": image_batch, "times_s": times, "seconds": seconds,
           "best_s": min(times), "evals_per_s": rate, "flops_per_s": rate * flops_per_eval}
    if peak:
        row["fraction_of_peak"] = row["flops_per_s"] / (peak * 1e12)
    return row


def _print_row(row: dict) -> None:
    extra = f"  {row['speedup']:5.2f}x" if "speedup" in row else "  1.00x"
    if "fraction_of_peak" in row:
        extra += f"  {100 * row['fraction_of_peak']:5.1f}% of peak"
    if "peak_memory_gib" in row:
        extra += f"  peak mem {row['peak_memory_gib']:.2f} GiB"
    if "agreement" in row:
        a = row["agreement"]
        extra += f"  same preds {a['same_predictions']}/{a['n_images']}, max diff {a['max_abs_diff']:.2g}"
    print(f"  {row['variant']:<34} batch {row['batch_size']:>4}  images/call {row['image_batch']:>3}  "
          f"{row['seconds']:8.2f} s (best {row['best_s']:.2f})  {row['evals_per_s']:9.4g} evals/s  "
          f"{_fmt_rate(row['flops_per_s']):>14}{extra}", flush=True)


VARIANT_TOKENS = ("eager", "channels_last", "compile", "freeze", "inference_mode", "classic")


def parse_variant(spec: str) -> frozenset[str]:
    """'compile+channels_last' -> {'compile', 'channels_last'}; tokens as in VARIANT_TOKENS."""
    tokens = frozenset(t for t in spec.split("+") if t)
    unknown = sorted(tokens - set(VARIANT_TOKENS))
    if unknown or not tokens:
        raise ValueError(f"engine variant must be '+'-joined tokens from {', '.join(VARIANT_TOKENS)}, got {spec!r}")
    if "freeze" in tokens and "compile" not in tokens:
        raise ValueError(f"engine variant 'freeze' (inductor weight freezing) needs 'compile', got {spec!r}")
    return tokens - {"eager"}


def variant_name(tokens: frozenset[str]) -> str:
    return "engine" + "".join(f" +{t}" for t in VARIANT_TOKENS if t in tokens)


def prepare_denoiser(unet: torch.nn.Module, tokens: frozenset[str], compile_mode: str | None = None):
    """The engine's UNet for a variant (a copy when its layout or attention differ) and a call wrapper."""
    import contextlib
    import copy

    model = unet
    if tokens & {"channels_last", "classic"}:
        model = copy.deepcopy(unet)  # the reference keeps the original module untouched
        set_attention(model, "classic" if "classic" in tokens else "sdpa")
        if "channels_last" in tokens:
            model.to(memory_format=torch.channels_last)
    if "compile" in tokens:
        model = torch.compile(model, mode=compile_mode)  # a second batch shape recompiles once, dynamic

    def context():
        stack = contextlib.ExitStack()
        if "freeze" in tokens:  # read when a shape is compiled, i.e. on calls
            import torch._inductor.config as inductor_config

            stack.enter_context(inductor_config.patch(freezing=True))
        if "inference_mode" in tokens:
            stack.enter_context(torch.inference_mode())
        return stack

    return model, context


def run_benchmark(work: Workload, to_keep, n_samples, n_trials: int, loss: str, device: torch.device,
                  dtype: torch.dtype, ref_batch_size: int, batch_sizes: list[int], image_batches: list[int],
                  warmup: int, repeats: int, variants: list[frozenset[str]] = (frozenset(),),
                  compile_mode: str | None = None, peak: float | None = None) -> dict:
    """Time the reference loop and the engine settings (variant x batch size x images per call) interleaved.

    Each repeat runs every setting once in turn, so a change of machine load hits all of them alike;
    a setting's time is the median of its repeats. Returns rows, the best engine row and agreement.
    """
    unet, T = work.unet, len(work.alphas_cumprod)
    n_images, n_prompts = len(work.latents), len(work.conds)
    evaluations = n_images * n_evaluations(n_prompts, to_keep, n_samples, n_trials, T)
    shape = tuple(work.latents.shape[1:])

    def forward(b: int) -> None:
        x = work.noise[:1].expand(b, *shape).to(device, dtype)
        unet(x, torch.full((b,), T // 2, device=device), encoder_hidden_states=work.conds[:1].expand(b, -1, -1).to(device))

    set_attention(unet, "sdpa")  # the reference ran a fused kernel (xformers)
    b_flops = 2
    flops_per_eval = count_flops(lambda: forward(b_flops)) // b_flops
    with torch.inference_mode():
        forward(2)  # first-call allocations, kernel selection
    print(f"{evaluations} evaluations ({n_images} images x {evaluations // n_images}), "
          f"{flops_per_eval / 1e9:.4g} GFLOP per evaluation", flush=True)

    settings = [("reference loop (per image)", ref_batch_size, 1, frozenset(),
                 lambda: reference_classify(unet, work.latents, work.conds, work.alphas_cumprod, work.noise, to_keep,
                                            n_samples, n_trials, ref_batch_size, loss, device, dtype))]
    for tokens in variants:
        model, context = prepare_denoiser(unet, tokens, compile_mode)
        for b in batch_sizes:
            scorer = Scorer(unet_denoiser(model), work.alphas_cumprod, work.noise, device, dtype, b)
            for ib in image_batches:
                def call(scorer=scorer, ib=ib, context=context):
                    with context():
                        return engine_classify(scorer, work.latents, work.conds, to_keep, n_samples, n_trials, ib,
                                               loss, T)

                settings.append((variant_name(tokens), b, ib, tokens, call))

    times: list[list[float]] = [[] for _ in settings]
    outputs: list[object] = [None] * len(settings)
    memory = [0.0] * len(settings)
    for i, (name, b, ib, tokens, fn) in enumerate(settings):
        # torch.compile specialises on each batch shape: one untimed run compiles them all
        for _ in range(max(warmup, int("compile" in tokens))):
            outputs[i] = fn()
    for _ in range(repeats):
        for i, (name, b, ib, tokens, fn) in enumerate(settings):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t, outputs[i] = time_runs(fn, device, 0, 1)
            times[i] += t
            if device.type == "cuda":
                memory[i] = max(memory[i], torch.cuda.max_memory_allocated(device) / 2**30)

    out = {"evaluations": evaluations, "flops_per_eval": flops_per_eval, "engine": []}
    ref = outputs[0]
    for i, (name, b, ib, tokens, fn) in enumerate(settings):
        row = _row(name, b, ib, times[i], evaluations, flops_per_eval, peak)
        if device.type == "cuda":
            row["peak_memory_gib"] = memory[i]
        if i == 0:
            out["reference"] = row
        else:
            row["agreement"] = compare_results(ref, outputs[i])
            row["speedup"] = out["reference"]["seconds"] / row["seconds"]
            out["engine"].append(row)
        _print_row(row)
    best_i = 1 + min(range(len(out["engine"])), key=lambda j: out["engine"][j]["seconds"])
    best = out["engine"][best_i - 1]
    out["best"] = best
    out["speedup"] = best["speedup"]
    agree = dict(best["agreement"])
    agree["within_tolerance"] = agree["max_rel_diff"] <= TOLERANCE.get(dtype, 1e-1)
    out["agreement"] = agree
    if work.labels is not None:
        out["accuracy_reference"] = 100 * sum(p == y for (p, _), y in zip(ref, work.labels)) / n_images
        out["accuracy_engine"] = 100 * sum(r.pred == y for r, y in zip(outputs[best_i], work.labels)) / n_images
    return out


# ---------------------------------------------------------------------------------------------
# whole-process mode: the reference's command line, run by our script with no extra flags, against
# the re-created reference loop run as a script of its own; both are timed from process start to exit


def reference_process(version: str, dataset: str, split: str, to_keep, n_samples, subset_path: Path,
                      out_folder: Path, seed: int = 0, device: str | None = None) -> None:
    """What the reference's script does, re-created: load, then one image at a time, one record each.

    Same model loading, pre-processing, prompts and noise bank (seed `seed`) as eval_prob_adaptive.py
    at its defaults; each record is {pred, label, errors} like the reference's.
    """
    import os

    import numpy as np

    from diffusion_classifier.datasets import get_dataset, sd_transform
    from diffusion_classifier.models import load_text_conditional, resolve_sd_model
    from diffusion_classifier.noise import noise_bank
    from diffusion_classifier.prompts import read_prompts
    from diffusion_classifier.records import save_record

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = default_dtype(None, dev)
    model = load_text_conditional(resolve_sd_model(version, None), dev, dtype)
    img_size = model.native_size
    data = get_dataset(dataset, Path(os.environ.get("DATASET_ROOT", "datasets")), split, sd_transform(img_size, "bicubic"))
    table = read_prompts(ROOT / "prompts" / f"{dataset}_prompts.csv")
    _, rows = make_schedule("reference", to_keep, n_samples, 1, T=model.T)
    noise, _ = noise_bank(rows, model.latent_shape(img_size), seed)
    embeds = model.encode_prompts(table.prompts)
    out_folder.mkdir(parents=True, exist_ok=True)
    for i in np.load(subset_path).tolist():
        image, label = data[i]
        latent = model.encode_images(image[None])
        (pred, errors), = reference_classify(model.unet, latent, embeds, model.alphas_cumprod, noise, to_keep,
                                             n_samples, 1, 32, "l2", dev, dtype)
        save_record({"pred": int(table.classidx[pred]), "label": int(label), "errors": errors},
                    out_folder / f"{i}.pt")


def _timed_process(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process run to its exit; CPU time is less hit by other load."""
    import resource
    import subprocess

    def child_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    cpu, start = child_cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, child_cpu() - cpu
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, cpu


def whole_process_benchmark(version: str, dataset: str, split: str, n_images: int, to_keep, n_samples,
                            repeats: int, work_dir: Path, threads: int | None = None) -> dict:
    """Wall time of `eval_prob_adaptive.py` at its defaults vs the re-created reference script, same images.

    Both are separate Python processes (imports, loading, records included), timed interleaved, the
    median of `repeats` each; their records are compared for predictions and errors.
    """
    import os

    import numpy as np

    from diffusion_classifier.records import load_record

    work_dir.mkdir(parents=True, exist_ok=True)
    subset = work_dir / "subset.npy"
    np.save(subset, np.arange(n_images))
    schedule = ["--to_keep", *map(str, to_keep), "--n_samples", *map(str, n_samples)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    # the reference's own flags only; LOG_DIR (an environment variable) keeps the runs apart
    ours = [sys.executable, "eval_prob_adaptive.py", "--version", version, "--dataset", dataset, "--split", split,
            *schedule, "--subset_path", str(subset)]
    ref = [sys.executable, str(Path(__file__).resolve()), "--reference_process", "--model", version,
           "--dataset", dataset, "--split", split, *schedule]
    times = {"ours": [], "reference": []}
    cpu_times = {"ours": [], "reference": []}
    for k in range(repeats):
        env["LOG_DIR"] = str(work_dir / f"ours{k}")
        for name, cmd in (("ours", ours), ("reference", ref + ["--subset_path", str(subset), "--out",
                                                               str(work_dir / f"ref{k}")])):
            wall, cpu = _timed_process(cmd, env)
            times[name].append(wall)
            cpu_times[name].append(cpu)
        print(f"  repeat {k}: ours {times['ours'][-1]:.2f} s ({cpu_times['ours'][-1]:.2f} s CPU), reference "
              f"{times['reference'][-1]:.2f} s ({cpu_times['reference'][-1]:.2f} s CPU)", flush=True)
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["reference"])
    ours_cpu, ref_cpu = statistics.median(cpu_times["ours"]), statistics.median(cpu_times["reference"])
    (folder,) = [p.parent for p in (work_dir / "ours0").rglob("manifest.json")]
    same, diff, compared = 0, 0.0, 0
    for i in range(n_images):
        a = load_record(work_dir / "ref0" / f"{i}.pt")
        (b_path,) = [p for p in folder.glob("*.pt") if int(p.stem) == i]
        b = load_record(b_path)
        same += int(a["pred"] == b["pred"])
        for c, entry in a["errors"].items():
            if c in b["errors"] and len(entry["pred_errors"]) == len(b["errors"][c]["pred_errors"]):
                d = (entry["pred_errors"].double() - b["errors"][c]["pred_errors"].double()).abs().max().item()
                diff, compared = max(diff, d), compared + len(entry["pred_errors"])
    from diffusion_classifier.prompts import read_prompts

    n_prompts = len(read_prompts(ROOT / "prompts" / f"{dataset}_prompts.csv").prompts)
    evaluations = n_images * n_evaluations(n_prompts, to_keep, n_samples)
    return {"mode": "whole_process", "command": " ".join(ours[1:]), "reference_command": " ".join(ref[1:]),
            "n_images": n_images, "evaluations": evaluations, "times_s": times, "ours_s": ours_s, "reference_s": ref_s,
            "ours_evals_per_s": evaluations / ours_s, "reference_evals_per_s": evaluations / ref_s,
            "speedup": ref_s / ours_s, "cpu_times_s": cpu_times, "ours_cpu_s": ours_cpu, "reference_cpu_s": ref_cpu,
            "cpu_time_ratio": ref_cpu / ours_cpu, "same_predictions": same, "max_abs_diff": diff, "errors_compared": compared,
            "threads": threads}


# real architectures of the other families (--arch), random weights


ARCHS = {  # name -> (family, diffusers class, config, blocks config keys, scheduler config, text shapes)
    "sdxl": ("sdxl", "UNet2DConditionModel", "SDXL_UNET", (), "SDXL_SCHEDULER", "SDXL_TEXT"),
    "sd3.5-medium": ("sd3", "SD3Transformer2DModel", "SD35_MEDIUM_TRANSFORMER", ("num_layers",), "SD3_SCHEDULER", "SD3_TEXT"),
    "sd3.5-large": ("sd3", "SD3Transformer2DModel", "SD35_LARGE_TRANSFORMER", ("num_layers",), "SD3_SCHEDULER", "SD3_TEXT"),
    "flux-dev": ("flux", "FluxTransformer2DModel", "FLUX1_DEV_TRANSFORMER", ("num_layers", "num_single_layers"),
                 "FLUX1_DEV_SCHEDULER", "FLUX1_TEXT"),
}


def _n_params(cls, config: dict) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return sum(p.numel() for p in cls.from_config(config).parameters())


def _depth_for_budget(cls, config: dict, keys: tuple, itemsize: int, max_gib: float) -> tuple[dict, float]:
    """The config, its blocks scaled down by a common fraction until the weights fit max_gib; and the fraction."""
    fraction = 1.0
    cfg = dict(config)
    while keys and _n_params(cls, cfg) * itemsize / 2**30 > max_gib and fraction > 0.02:
        fraction *= 0.8
        cfg = {**config, **{k: max(1, round(config[k] * fraction)) for k in keys}}
    blocks = sum(config[k] for k in keys) if keys else 1
    return cfg, (sum(cfg[k] for k in keys) / blocks if keys else 1.0)


def arch_model(name: str, img_size: int, dtype: torch.dtype, device: torch.device, max_gib: float, seed: int = 0):
    """(family model with a random backbone, conditions, latent shape, facts) for one --arch."""
    import diffusers

    from diffusion_classifier.engine import Conditions
    from diffusion_classifier.models import _VAE

    family, cls_name, cfg_name, keys, sched_name, text_name = ARCHS[name]
    cls = getattr(diffusers, cls_name)
    full = getattr(family_configs, cfg_name)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    n_full = _n_params(cls, full)
    cfg, depth = _depth_for_budget(cls, full, keys, itemsize, max_gib)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in the benchmark dtype: no float32 copy at this size
    try:
        torch.manual_seed(seed)
        with torch.device(device):
            net = cls.from_config(cfg).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)
    n_built = sum(p.numel() for p in net.parameters())
    geometry = _VAE(None, cfg["in_channels"] // (4 if family == "flux" else 1))
    geometry.downsample = family_configs.VAE_DOWNSAMPLE  # latents of the real VAE: 8x smaller than the image
    scheduler = dict(getattr(family_configs, sched_name))
    if family == "sdxl":
        from diffusion_classifier.families.sdxl import SDXLModel

        model = SDXLModel(net, (None, None), (None, None), geometry, _alphas_cumprod(scheduler), device, dtype,
                          f"{name} (random)", scheduler)
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


def arch_benchmark(name: str, img_size: int, dtype: torch.dtype, device: torch.device, batch_size: int,
                   n_batches: int, max_gib: float, seed: int = 0) -> dict:
    """Evaluations per second of one real architecture through the engine (Scorer + family denoiser + objective)."""
    import gc

    from diffusion_classifier.engine import Jobs

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


def n_built_str(facts: dict) -> str:
    s = f"{facts['params_built'] / 1e9:.2f}B params built"
    return s + (f" of {facts['params_full'] / 1e9:.2f}B" if facts["params_built"] != facts["params_full"] else "")


def run_archs(args, device: torch.device) -> dict:
    dtype = DTYPES[args.dtype] if args.dtype else torch.bfloat16
    img_size = args.img_size or 128
    batch = (args.batch_size or [2])[0]
    print(f"real architectures, random weights; {device}, {torch.get_num_threads()} threads, {dtype}, {img_size}px, "
          f"batch {batch}, {args.arch_batches} timed batches; weights capped at {args.max_gib} GiB "
          f"(deeper models are built with fewer blocks); torch {torch.__version__}", flush=True)
    rows = [arch_benchmark(a, img_size, dtype, device, batch, args.arch_batches, args.max_gib, args.seed) for a in args.arch]
    out = {"archs": rows, "settings": {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}}
    if args.json:
        from diffusion_classifier.records import write_json

        write_json(args.json, out)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="tiny",
                   help="tiny: the shipped digits model; sd2: the SD 2 base UNet with random weights; or a SD-format folder")
    p.add_argument("--img_size", type=int, default=None, help="image size; default: 512 for sd2, the model's own otherwise")
    p.add_argument("--n_images", type=int, default=None, help="images to classify; default 16 (tiny) or 4 (sd2)")
    p.add_argument("--n_prompts", type=int, default=10, help="candidate prompts per image")
    p.add_argument("--to_keep", nargs="+", type=int, default=[5, 1], help="prompts kept after each stage")
    p.add_argument("--n_samples", nargs="+", type=int, default=[10, 50], help="timesteps of each stage")
    p.add_argument("--n_trials", type=int, default=1, help="noise draws per timestep")
    p.add_argument("--loss", default="l2", choices=["l2", "l1", "huber"], help="error between ε and ε̂")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="model dtype; default float32 on CPU, float16 on CUDA")
    p.add_argument("--device", default=None, help="torch device; default cuda if available, else cpu")
    p.add_argument("--batch_size", nargs="+", type=int, default=None,
                   help="engine batch sizes to try; default 32 128 512 (tiny), 32 (sd2 on CPU), 32 64 128 (sd2 on CUDA)")
    p.add_argument("--image_batch", nargs="+", type=int, default=None,
                   help="images per adaptive_classify call to try; default all of them")
    p.add_argument("--ref_batch_size", type=int, default=32, help="batch size of the reference loop (its default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser for the engine")
    p.add_argument("--compile_mode", default=None, help="torch.compile mode (e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--channels_last", action="store_true", help="channels_last memory format for the engine")
    p.add_argument("--inference_mode", action="store_true", help="run the engine under torch.inference_mode")
    p.add_argument("--variants", nargs="+", default=None,
                   help=f"engine variants timed side by side, each '+'-joined tokens of {', '.join(VARIANT_TOKENS)} "
                        "(freeze: inductor weight freezing; classic: bmm+softmax attention instead of SDPA); "
                        "default: the one set by --compile/--channels_last/--inference_mode")
    p.add_argument("--encode_text", action="store_true",
                   help="sd2: embed random token ids with a random SD2 text encoder instead of drawing embeddings")
    p.add_argument("--warmup", type=int, default=None, help="untimed full runs before timing; default 1 (0 for sd2 on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (the median counts); default 3 (1 for sd2 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads; default torch's choice")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="GPU peak TFLOP/s for this dtype; default by device name (H100/H200 989, A100 312 at 16 bits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, latents and noise bank")
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    p.add_argument("--whole_process", action="store_true",
                   help="time whole processes: eval_prob_adaptive.py at its defaults (the reference's command line, "
                        "--version --model --dataset digits) against the re-created reference script, same images, "
                        "noise and schedule")
    p.add_argument("--dataset", default="digits", help="whole-process mode: dataset (digits ships with the package)")
    p.add_argument("--split", default="test", help="whole-process mode: dataset split")
    p.add_argument("--work_dir", type=Path, default=None, help="whole-process mode: run folders; default a temporary one")
    p.add_argument("--reference_process", action="store_true", help=argparse.SUPPRESS)  # one re-created reference run
    p.add_argument("--subset_path", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--arch", nargs="+", default=None, choices=list(ARCHS),
                   help="time these real architectures (random weights, engine only) instead of --model")
    p.add_argument("--arch_batches", type=int, default=2, help="--arch: timed batches per architecture")
    p.add_argument("--max_gib", type=float, default=12.0,
                   help="--arch: largest weights built; deeper models keep a fraction of their blocks (labelled)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.reference_process:
        reference_process(args.model, args.dataset, args.split, args.to_keep, args.n_samples, args.subset_path,
                          args.out, args.seed, args.device)
        return {}
    if args.whole_process:
        return whole_process_main(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = default_dtype(args.dtype, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arch:
        return run_archs(args, device)
    if args.variants:
        variants = [parse_variant(v) for v in args.variants]
    else:
        variants = [frozenset(t for t, on in [("compile", args.compile), ("channels_last", args.channels_last),
                                              ("inference_mode", args.inference_mode)] if on)]
    sd2 = args.model == "sd2"
    slow = sd2 and device.type == "cpu"
    n_images = args.n_images or (4 if sd2 else 16)
    batch_sizes = args.batch_size or ([32] if slow else [32, 64, 128] if sd2 else [32, 128, 512])
    image_batches = args.image_batch or [n_images]
    warmup = args.warmup if args.warmup is not None else (0 if slow else 1)
    repeats = args.repeats if args.repeats is not None else (1 if slow else 3)
    for name, v in [("--n_images", n_images), ("--n_prompts", args.n_prompts), ("--n_trials", args.n_trials),
                    ("--ref_batch_size", args.ref_batch_size), ("--repeats", repeats),
                    ("--batch_size", min(batch_sizes)), ("--image_batch", min(image_batches))]:
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    from diffusion_classifier.adaptive import validate_schedule

    validate_schedule(args.to_keep, args.n_samples, args.n_prompts)
    _, rows = make_schedule("reference", args.to_keep, args.n_samples, args.n_trials, T=1000)

    if sd2:
        work = sd2_workload(args.img_size or 512, n_images, args.n_prompts, rows, device, dtype, args.seed,
                            args.encode_text)
    elif args.model == "tiny":
        work = tiny_workload(n_images, args.n_prompts, rows, device, dtype, args.seed)
    else:
        work = folder_workload(args.model, args.img_size, n_images, args.n_prompts, rows, device, dtype, args.seed)
    peak = args.peak_tflops
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    if peak is None and device.type == "cuda":
        peak = peak_tflops(device_name, dtype)
    print(f"{work.description}; {device_name}, {dtype}; {args.n_prompts} prompts, schedule keep {args.to_keep} "
          f"samples {args.n_samples}, {args.n_trials} trial(s), loss {args.loss}; torch {torch.__version__}", flush=True)
    if device.type == "cuda" and peak is None:
        print("unknown GPU peak: pass --peak_tflops to get the fraction of peak")

    out = run_benchmark(work, args.to_keep, args.n_samples, args.n_trials, args.loss, device, dtype,
                        args.ref_batch_size, batch_sizes, image_batches, warmup, repeats, variants,
                        args.compile_mode, peak)
    best, agree = out["best"], out["agreement"]
    print(f"best engine setting: {best['variant']}, batch {best['batch_size']}, {best['image_batch']} images per call: "
          f"{best['evals_per_s']:.4g} vs {out['reference']['evals_per_s']:.4g} evals/s = "
          f"{out['speedup']:.2f}x the reference loop")
    print(f"agreement: same prediction for {agree['same_predictions']}/{agree['n_images']} images; errors max abs "
          f"diff {agree['max_abs_diff']:.3g} (relative {agree['max_rel_diff']:.3g}) over {agree['errors_compared']} "
          f"errors: {'within' if agree['within_tolerance'] else 'OUTSIDE'} {dtype} tolerance")
    if "accuracy_engine" in out:
        print(f"accuracy on these digits: reference {out['accuracy_reference']:.1f}%, engine {out['accuracy_engine']:.1f}%")
    out["settings"] = {"model": args.model, "img_size": args.img_size, "n_images": n_images, "n_prompts": args.n_prompts,
                       "to_keep": args.to_keep, "n_samples": args.n_samples, "n_trials": args.n_trials,
                       "loss": args.loss, "dtype": str(dtype), "device": device_name,
                       "variants": [variant_name(v) for v in variants], "batch_sizes": batch_sizes,
                       "image_batches": image_batches, "warmup": warmup, "repeats": repeats, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "peak_tflops": peak, "workload": work.description}
    if args.json:
        from diffusion_classifier.records import write_json

        write_json(args.json, out)
    return out


def whole_process_main(args: argparse.Namespace) -> dict:
    import tempfile

    n_images = args.n_images or 16
    repeats = args.repeats or 3
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or Path(tmp)
        print(f"whole process, {args.model} on {n_images} {args.dataset} {args.split} images, keep {args.to_keep} "
              f"samples {args.n_samples}, {repeats} repeat(s) interleaved", flush=True)
        out = whole_process_benchmark(args.model, args.dataset, args.split, n_images, args.to_keep, args.n_samples,
                                      repeats, work_dir, args.threads)
    print(f"ours:      {out['command']}\n           {out['ours_s']:.2f} s, {out['ours_evals_per_s']:.4g} evals/s")
    print(f"reference: {out['reference_s']:.2f} s, {out['reference_evals_per_s']:.4g} evals/s (whole process)")
    print(f"CPU time:  ours {out['ours_cpu_s']:.2f} s, reference {out['reference_cpu_s']:.2f} s: "
          f"{out['cpu_time_ratio']:.2f}x less")
    print(f"whole process: {out['speedup']:.2f}x the reference; same prediction for {out['same_predictions']}/"
          f"{out['n_images']} images, errors max abs diff {out['max_abs_diff']:.3g} over {out['errors_compared']}")
    out["torch"] = torch.__version__
    if args.json:
        from diffusion_classifier.records import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
