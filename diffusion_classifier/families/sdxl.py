"""Stable Diffusion XL: UNet with text-time conditioning, two CLIP encoders, DDPM objective (any prediction type).

Prompts are encoded as StableDiffusionXLPipeline.encode_prompt does: each encoder's penultimate hidden
state concatenated over features, and the second encoder's projected pooled output. The added time
ids are the pipeline's defaults for an image of size S: original size = target size = (S, S), crop (0, 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import Conditions
from ..loading import VAE, DDPMModel, frozen, has_component, latent_space, load_part, load_vae, one_truncation_warning, pipeline_index, pooled_conditions, require_components, scheduler_config, set_attention, tokenize
from ..objectives import objective_from_config
from ..vb import alphas_cumprod_from_config


@one_truncation_warning()
def encode_sdxl_prompts(prompts: list[str], tokenizers, text_encoders) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings (K, L, D1 + D2), pooled embeddings (K, P)) of the encoders that are present."""
    hidden, pooled = [], None
    for tok, enc in zip(tokenizers, text_encoders):
        if enc is None:
            continue
        ids = tokenize(tok, list(prompts), tok.model_max_length, "CLIP tokenizer")
        out = enc(ids.to(next(enc.parameters()).device), output_hidden_states=True)
        if out[0].ndim == 2:  # only the projection model has a pooled output; the last one wins
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def add_time_ids(height: int, width: int, n: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The pipeline's default micro-conditioning (original (H, W), crop (0, 0), target (H, W)): (n, 6)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device).expand(n, 6)


@dataclass
class SDXLModel(DDPMModel):
    """An SDXL pipeline: UNet, CLIP-L and CLIP-G (with projection), VAE (or pixels), ᾱ table."""

    unet: torch.nn.Module
    text_encoders: tuple
    tokenizers: tuple
    autoencoder: VAE
    alphas_cumprod: torch.Tensor  # (T,) float64
    device: torch.device
    dtype: torch.dtype
    source: str
    scheduler_config: dict = None

    family = "sdxl"

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 64) -> Conditions:
        """Both encoders' penultimate states and CLIP-G's pooled embedding of each prompt, in the model dtype."""
        return pooled_conditions(lambda p: encode_sdxl_prompts(p, self.tokenizers, self.text_encoders), prompts,
                                 batch_size, self.dtype)

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        size = [s * self.autoencoder.downsample for s in x_t.shape[-2:]]  # pixel size of this latent
        time_ids = add_time_ids(*size, len(x_t), x_t.dtype, x_t.device)
        return self.unet(x_t, t, encoder_hidden_states=cond.prompt_embeds,
                         added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": time_ids}).sample


def load_sdxl(model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              attention: str = "sdpa", **_) -> SDXLModel:
    """Load an SDXL folder or hub id; its VAE stays in float32 where its config sets force_upcast."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    what = "SDXL model"
    device = torch.device(device)
    index = pipeline_index(model, what)
    require_components(index, model, what, ("unet", "text_encoder_2", "tokenizer_2", "scheduler"))
    config = scheduler_config(model, what)
    objective_from_config(config)
    unet = frozen(load_part(UNet2DConditionModel, model, what, subfolder="unet", torch_dtype=dtype), device)
    set_attention(unet, attention)
    enc1 = tok1 = None
    if has_component(index, "text_encoder"):  # the refiner has only the second encoder
        enc1 = frozen(load_part(CLIPTextModel, model, what, subfolder="text_encoder", torch_dtype=dtype), device)
        tok1 = load_part(CLIPTokenizer, model, what, subfolder="tokenizer")
    enc2 = frozen(load_part(CLIPTextModelWithProjection, model, what, subfolder="text_encoder_2", torch_dtype=dtype), device)
    tok2 = load_part(CLIPTokenizer, model, what, subfolder="tokenizer_2")
    vae = load_vae(model, what, index, dtype, device)
    latents = latent_space(vae, unet.config.in_channels, model, what, "UNet")
    return SDXLModel(unet, (enc1, enc2), (tok1, tok2), latents, alphas_cumprod_from_config(config),
                     device, dtype, model, config)
