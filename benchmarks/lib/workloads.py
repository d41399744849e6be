"""Workloads of the engine-vs-reference benchmark: a UNet, latents, prompt embeddings, ᾱ table and noise bank."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion_classifier.families import SD_VERSIONS
from diffusion_classifier.noise import make_noise
from diffusion_classifier.vb import alphas_cumprod_from_config

from . import ROOT, sd2_configs


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
    """Any Stable-Diffusion-format folder: random latents, prompts 'class i' (short: they fit any tokenizer)."""
    from diffusion_classifier.families.sd import load_text_conditional

    model = load_text_conditional(folder, device, dtype)
    shape = model.latent_shape(img_size or model.native_size)
    conds = model.encode_prompts([f"class {i}" for i in range(n_prompts)]).cpu()
    return Workload(model.unet, make_noise(n_images, shape, seed + 1), conds, model.alphas_cumprod,
                    make_noise(rows, shape, seed), None, f"model folder {folder}, latents {shape}")
