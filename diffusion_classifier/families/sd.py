"""Stable Diffusion 1.x / 2.x: UNet, one CLIP text encoder, VAE (or pixels), DDPM objective of any prediction type
(or rectified flow, where the folder holds a flow-matching scheduler).

Prompts are encoded as StableDiffusionPipeline.encode_prompt does: the text encoder's last hidden state
for max-length padded prompts. The shipped digits-sd is an ordinary folder in this layout, in pixel space.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..loading import VAE, DDPMModel, ddpm_alphas_cumprod, frozen, latent_space, load_part, load_vae, pipeline_index, require_components, scheduler_config, set_attention, tokenize
from ..objectives import objective_from_config


@dataclass
class TextConditionalModel(DDPMModel):
    """A Stable-Diffusion-format model: UNet, CLIP text encoder and tokenizer, VAE (or pixels), ᾱ table."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    autoencoder: VAE
    alphas_cumprod: torch.Tensor | None  # (T,) float64; None: a flow-matching scheduler (loading.DDPMModel)
    device: torch.device
    dtype: torch.dtype
    source: str
    scheduler_config: dict = None

    family = "sd"

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Last hidden state of the text encoder for max-length padded prompts: (K, L, D)."""
        out = []
        for i in range(0, len(prompts), batch_size):
            ids = tokenize(self.tokenizer, list(prompts[i : i + batch_size]), self.tokenizer.model_max_length, "CLIP tokenizer")
            out.append(self.text_encoder(ids.to(self.device))[0])
        return torch.cat(out).to(self.dtype)

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, encoder_hidden_states=cond).sample


def check_text_only(unet, model: str, what: str) -> None:
    """InputError where the UNet needs conditioning besides the prompt that StableDiffusionPipeline never gives: class
    labels or embeddings (unCLIP, upscaler: class_embed_type, num_class_embeds) or added embeddings (SDXL's text_time:
    addition_embed_type), which would otherwise fail inside the first denoiser call."""
    cfg = unet.config
    extra = {k: cfg.get(k) for k in ("class_embed_type", "num_class_embeds", "addition_embed_type") if cfg.get(k) is not None}
    if not extra:
        return
    found = ", ".join(f"{k} {v!r}" for k, v in extra.items())
    hint = (": an SDXL UNet, whose folder's model_index.json should name StableDiffusionXLPipeline"
            if extra.get("addition_embed_type") == "text_time" else
            " (an unCLIP, upscaler or other image-conditioned UNet, not a text-to-image one)")
    raise InputError(f"{what} {model!r}: its UNet takes extra conditioning ({found}) that a StableDiffusionPipeline "
                     f"does not give; expected a UNet conditioned on the prompt alone{hint}")


def load_text_conditional(
    model: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    attention: str = "sdpa",
    **_,
) -> TextConditionalModel:
    """Load a Stable-Diffusion-format (1.x/2.x) pipeline folder or hub id, any prediction type (only what scoring needs)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    what = "Stable Diffusion model"
    device = torch.device(device)
    index = pipeline_index(model, what)
    require_components(index, model, what, ("unet", "text_encoder", "tokenizer", "scheduler"))
    config = scheduler_config(model, what)
    objective_from_config(config)  # an unknown objective fails before the weights load
    unet = frozen(load_part(UNet2DConditionModel, model, what, subfolder="unet", torch_dtype=dtype), device)
    check_text_only(unet, model, what)
    set_attention(unet, attention)
    text_encoder = frozen(load_part(CLIPTextModel, model, what, subfolder="text_encoder", torch_dtype=dtype), device)
    tokenizer = load_part(CLIPTokenizer, model, what, subfolder="tokenizer")
    vae = load_vae(model, what, index, dtype, device)
    latents = latent_space(vae, unet.config.in_channels, model, what, "UNet")
    return TextConditionalModel(unet, text_encoder, tokenizer, latents,
                                ddpm_alphas_cumprod(config), device, dtype, model, config)
