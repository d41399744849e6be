"""Flux.1 (schnell, dev): MMDiT over packed 2x2 latent patches, CLIP pooled + T5 text, flow matching.

As FluxPipeline: latents (C, H, W) are packed into (H/2·W/2, 4C) tokens with (0, row, col) position
ids, the text tokens get zero ids, the transformer is given σ (the pipeline's timestep / 1000), and
dev's guidance embedding gets a constant guidance value (default 3.5, the pipeline's). σ uses the
scheduler's resolution-dependent shift for the image's token count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import Conditions
from ..errors import InputError
from ..loading import VAE, ModelGeometry, frozen, latent_space, load_part, load_vae, one_truncation_warning, pipeline_index, pooled_conditions, require_components, scheduler_config, set_attention, tokenize
from ..objectives import objective_from_config

T5_MAX_LENGTH = 512  # the pipeline's default max_sequence_length
DEFAULT_GUIDANCE = 3.5


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2·W/2, 4C): 2x2 patches as tokens, channels before the patch offsets."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of pack_latents: (B, H/2·W/2, 4C) -> (B, C, H, W)."""
    b, _, d = x.shape
    c = d // 4
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def latent_image_ids(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Position ids (0, row, col) of the (h/2)·(w/2) packed tokens: (h/2·w/2, 3)."""
    rows = torch.arange(h // 2).view(-1, 1).expand(h // 2, w // 2)
    cols = torch.arange(w // 2).view(1, -1).expand(h // 2, w // 2)
    ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3)
    return ids.to(device=device, dtype=dtype)


@one_truncation_warning()
def encode_flux_prompts(prompts: list[str], tokenizers, text_encoders,
                        t5_max_length: int = T5_MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 last hidden state (K, t5_max_length, D), CLIP pooled output (K, P)) for (CLIP, T5) pairs."""
    clip_tok, t5_tok = tokenizers
    clip, t5 = text_encoders
    ids = tokenize(clip_tok, list(prompts), clip_tok.model_max_length, "CLIP tokenizer")
    pooled = clip(ids.to(next(clip.parameters()).device), output_hidden_states=False).pooler_output
    ids = tokenize(t5_tok, list(prompts), t5_max_length, "T5 tokenizer")
    hidden = t5(ids.to(next(t5.parameters()).device), output_hidden_states=False)[0]
    return hidden, pooled


@dataclass
class FluxModel(ModelGeometry):
    """A Flux.1 pipeline: transformer, CLIP + T5, VAE (or pixels), flow scheduler config, guidance value."""

    transformer: torch.nn.Module
    text_encoders: tuple  # (CLIP, T5)
    tokenizers: tuple
    autoencoder: VAE
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    source: str
    guidance: float = DEFAULT_GUIDANCE
    t5_max_length: int = T5_MAX_LENGTH

    family = "flux"
    backbone_name = "transformer"
    token_patch = 2
    size_multiple = 2

    @property
    def native_size(self) -> int:
        return 128 * self.autoencoder.downsample  # the pipeline's default_sample_size (1024 px with the VAE)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 64) -> Conditions:
        """T5 and pooled CLIP embeddings of each prompt, in the model dtype."""
        return pooled_conditions(lambda p: encode_flux_prompts(p, self.tokenizers, self.text_encoders, self.t5_max_length),
                                 prompts, batch_size, self.dtype)

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        h, w = x_t.shape[-2:]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((len(x_t),), self.guidance, device=x_t.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack_latents(x_t), timestep=t.to(x_t.dtype) / 1000, guidance=guidance,  # as the pipeline rounds it
            pooled_projections=cond.pooled, encoder_hidden_states=cond.prompt_embeds,
            txt_ids=torch.zeros(cond.prompt_embeds.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
            img_ids=latent_image_ids(h, w, x_t.device, x_t.dtype),
        ).sample
        return unpack_latents(out, h, w)


def load_flux(model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              attention: str = "sdpa", guidance: float | None = None, t5_max_length: int = T5_MAX_LENGTH,
              **_) -> FluxModel:
    """Load a Flux.1 folder or hub id; `guidance` is dev's guidance-embedding value (ignored by schnell)."""
    from diffusers import FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    what = "Flux model"
    device = torch.device(device)
    index = pipeline_index(model, what)
    require_components(index, model, what, ("transformer", "text_encoder", "text_encoder_2", "tokenizer",
                                            "tokenizer_2", "scheduler"))
    config = scheduler_config(model, what)
    objective_from_config(config, image_seq_len=1)
    transformer = frozen(load_part(FluxTransformer2DModel, model, what, subfolder="transformer", torch_dtype=dtype), device)
    if guidance is not None and not transformer.config.guidance_embeds:
        raise InputError(f"guidance sets the guidance embedding of Flux-dev models; {model!r} has none (as "
                         f"FLUX.1-schnell): leave guidance out")
    set_attention(transformer, attention)
    clip = frozen(load_part(CLIPTextModel, model, what, subfolder="text_encoder", torch_dtype=dtype), device)
    t5 = frozen(load_part(T5EncoderModel, model, what, subfolder="text_encoder_2", torch_dtype=dtype), device)
    tokenizers = (load_part(CLIPTokenizer, model, what, subfolder="tokenizer"),
                  load_part(AutoTokenizer, model, what, subfolder="tokenizer_2"))
    vae = load_vae(model, what, index, dtype, device)
    channels = transformer.config.in_channels // 4
    latents = latent_space(vae, channels, model, what, "transformer")
    return FluxModel(transformer, (clip, t5), tokenizers, latents, config, device, dtype, model,
                     DEFAULT_GUIDANCE if guidance is None else guidance, t5_max_length)
