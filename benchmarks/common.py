"""Shared pieces of the benchmark scripts: paths, timing, FLOP counting, GPU peaks, workloads, digits runs, tables.

Each script in benchmarks/ measures one thing and imports what it shares from here (run from the
repository or anywhere: the checkout is put on sys.path).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)  # the package and the sibling config modules, from any working directory

import sd2_configs  # noqa: E402
from diffusion_classifier.data.datasets import sd_transform, stratified_indices  # noqa: E402,F401 (stratified_indices: for the benchmarks)
from diffusion_classifier.data.digits import DigitsDataset  # noqa: E402
from diffusion_classifier.engine import Scorer  # noqa: E402
from diffusion_classifier.families import SD_VERSIONS  # noqa: E402
from diffusion_classifier.noise import make_noise  # noqa: E402
from diffusion_classifier.schedules.statistical import make_schedule  # noqa: E402
from diffusion_classifier.vb import alphas_cumprod_from_config  # noqa: E402

# dense fp16/bf16 tensor-core and fp32 (non-tensor-core) peaks in TFLOP/s; the first name that matches wins
PEAK_TFLOPS = {
    "H100 PCIE": {"half": 756.0, "float32": 51.0},
    "H200": {"half": 989.0, "float32": 67.0},
    "H100": {"half": 989.0, "float32": 67.0},
    "A100": {"half": 312.0, "float32": 19.5},
}


# ---------------------------------------------------------------- FLOPs, timing, device facts


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


def fmt_rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.2f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


# ---------------------------------------------------------------- workloads of the engine-vs-reference benchmark


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


def build_unet(config: dict, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A UNet2DConditionModel of `config` with seeded random weights, frozen, in `dtype` on `device`."""
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
    if img_size % sd2_configs.SD2_BASE_VAE_DOWNSAMPLE:
        raise ValueError(f"--img_size must be a multiple of {sd2_configs.SD2_BASE_VAE_DOWNSAMPLE} for SD2, got {img_size}")
    s = img_size // sd2_configs.SD2_BASE_VAE_DOWNSAMPLE
    shape = (sd2_configs.SD2_BASE_LATENT_CHANNELS, s, s)
    unet = build_unet(sd2_configs.SD2_BASE_UNET, device, dtype, seed)
    text = sd2_configs.SD2_BASE_TEXT_ENCODER
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
    return Workload(unet, make_noise(n_images, shape, seed + 1), conds,
                    alphas_cumprod_from_config(sd2_configs.SD2_BASE_SCHEDULER), make_noise(rows, shape, seed), None,
                    f"Stable Diffusion 2 base UNet (random weights), {img_size}px images, latents {shape}")


def tiny_workload(n_images: int, n_prompts: int, rows: int, device: torch.device, dtype: torch.dtype,
                  seed: int = 0) -> Workload:
    """The shipped digits model on test digits; a same-shaped random model if it is not there yet."""
    folder = Path(SD_VERSIONS["tiny"])
    if (folder / "model_index.json").is_file():
        from diffusion_classifier.data.digits import load_digits_arrays
        from diffusion_classifier.families.sd import load_text_conditional
        from diffusion_classifier.data.prompts import read_prompts

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
    cfg = sd2_configs.TINY_DIGITS_UNET
    shape = (cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
    g = torch.Generator().manual_seed(seed + 2)
    conds = torch.randn(n_prompts, *sd2_configs.TINY_DIGITS_CONTEXT, generator=g).to(dtype)
    return Workload(build_unet(cfg, device, dtype, seed), make_noise(n_images, shape, seed + 1), conds,
                    alphas_cumprod_from_config(sd2_configs.SD2_BASE_SCHEDULER), make_noise(rows, shape, seed), None,
                    "random stand-in for the digits model, pixel space 3x8x8")


def folder_workload(folder: str, img_size: int | None, n_images: int, n_prompts: int, rows: int,
                    device: torch.device, dtype: torch.dtype, seed: int = 0) -> Workload:
    """Any Stable-Diffusion-format folder: random latents, prompts 'a photo of class i.'."""
    from diffusion_classifier.families.sd import load_text_conditional

    model = load_text_conditional(folder, device, dtype)
    shape = model.latent_shape(img_size or model.native_size)
    conds = model.encode_prompts([f"a photo of class {i}." for i in range(n_prompts)]).cpu()
    return Workload(model.unet, make_noise(n_images, shape, seed + 1), conds, model.alphas_cumprod,
                    make_noise(rows, shape, seed), None, f"model folder {folder}, latents {shape}")


# ---------------------------------------------------------------- digits: accuracy of one schedule


def digits_test(model, limit: int | None = None):
    """(latents (N, C, 8, 8), labels (N,)) of the digits test split, encoded by `model`."""
    ds = DigitsDataset("test", transform=sd_transform(model.native_size))
    n = len(ds) if limit is None else min(limit, len(ds))
    pixels = torch.stack([ds[i][0] for i in range(n)])
    return model.encode_images(pixels), torch.tensor(ds.targets[:n])


def schedule_fn(spec: dict, T: int):
    """(classify, noise rows) from {'to_keep','n_samples'} or {'z','max_samples','min_samples'}."""
    if "z" in spec:
        return make_schedule("statistical", [1], [spec["max_samples"]], z=spec["z"],
                             min_samples=spec.get("min_samples", 10), T=T)
    return make_schedule("reference", spec["to_keep"], spec["n_samples"], T=T)


def run(model, conds, candidate_class, latents, labels, spec: dict, batch_size: int = 500, seed: int = 0,
        loss: str = "l2", chunk: int = 120, flow_grid: str = "timesteps", error_space: str | None = None) -> dict:
    """Accuracy, denoiser evaluations per image and seconds per image of one schedule on all images.

    The model's own objective (its scheduler config) noises and compares, in its default error space;
    `flow_grid` picks the σ grid of flow models, `error_space` overrides the default comparison."""
    classify, n_rows = schedule_fn(spec, model.T)
    noise = make_noise(n_rows, tuple(latents.shape[1:]), seed)
    objective = model.make_objective(tuple(latents.shape[1:]), error_space, flow_grid)  # the model's own (ε, v or flow)
    scorer = Scorer(model.denoiser, objective, noise, model.device, model.dtype, batch_size)
    n_evals, preds = 0, []
    start = time.perf_counter()
    for i in range(0, len(latents), chunk):
        x = latents[i : i + chunk]

        def evaluate(jobs):
            nonlocal n_evals
            n_evals += len(jobs)
            return scorer.evaluate(x, conds, jobs, loss)

        preds += [candidate_class[r.pred] for r in classify(evaluate, len(x), len(conds))]
    seconds = time.perf_counter() - start
    correct = sum(int(p == int(y)) for p, y in zip(preds, labels))
    return {"accuracy": 100.0 * correct / len(labels), "evals_per_image": n_evals / len(labels),
            "seconds_per_image": seconds / len(labels), "n_images": len(labels)}


def describe(spec: dict) -> str:
    if "z" in spec:
        return f"statistical z={spec['z']:g} (max {spec['max_samples']}, min {spec.get('min_samples', 10)})"
    if spec["to_keep"] == [1]:
        return f"all classes x {spec['n_samples'][0]} timesteps"
    return "keep " + " ".join(map(str, spec["to_keep"])) + " / samples " + " ".join(map(str, spec["n_samples"]))


def markdown_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| method | top-1 (%) | evaluations / image | s / image |", "|---|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['accuracy']:.2f} | {r['evals_per_image']:.0f} | {r['seconds_per_image']:.4f} |")
    return "\n".join(lines)
