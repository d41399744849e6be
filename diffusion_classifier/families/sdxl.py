"""Stable Diffusion XL: UNet with text-time conditioning, two CLIP encoders, DDPM objective (any prediction type).

Prompts are encoded as StableDiffusionXLPipeline.encode_prompt does: each encoder's penultimate hidden
state concatenated over features, and the second encoder's projected pooled output. The added time
ids are the pipeline's defaults for an image of size S: original size = target size = (S, S), crop (0, 0);
where model_index.json sets `requires_aesthetics_score` (the refiner) they are, as StableDiffusionXLImg2ImgPipeline's,
original size, crop (0, 0) and the aesthetic score 6.0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import Conditions
from ..errors import InputError
from ..loading import VAE, DDPMModel, ddpm_alphas_cumprod, frozen, has_component, latent_space, load_part, load_vae, one_truncation_warning, pipeline_index, pooled_conditions, require_components, scheduler_config, set_attention, tokenize
from ..objectives import objective_from_config


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


AESTHETIC_SCORE = 6.0  # StableDiffusionXLImg2ImgPipeline's default aesthetic_score (the refiner's)


def add_time_ids(height: int, width: int, n: int, dtype=torch.float32, device=None,
                 aesthetic_score: float | None = None) -> torch.Tensor:
    """The pipeline's default micro-conditioning: original (H, W), crop (0, 0), target (H, W): (n, 6); or, with an
    `aesthetic_score` (requires_aesthetics_score), original (H, W), crop (0, 0), score: (n, 5)."""
    ids = [height, width, 0, 0, *((aesthetic_score,) if aesthetic_score is not None else (height, width))]
    return torch.tensor([ids], dtype=dtype, device=device).expand(n, len(ids))


def check_time_ids(unet, pooled_dim: int, aesthetic_score: float | None, model: str, what: str) -> None:
    """InputError unless the UNet's added-conditioning input takes the pooled embedding and the time ids the
    pipeline gives (6, or 5 with requires_aesthetics_score), as the pipelines' _get_add_time_ids checks."""
    cfg = unet.config
    if cfg.addition_embed_type != "text_time":
        raise InputError(f"{what} {model!r}: its UNet has addition_embed_type {cfg.addition_embed_type!r}; expected "
                         f"'text_time' (an SDXL UNet): a Stable Diffusion 1.x/2.x UNet belongs in a "
                         f"StableDiffusionPipeline folder")
    n_ids = 5 if aesthetic_score is not None else 6
    takes = cfg.projection_class_embeddings_input_dim
    if takes != cfg.addition_time_embed_dim * n_ids + pooled_dim:
        found = (takes - pooled_dim) / cfg.addition_time_embed_dim
        hint = {5: ": set \"requires_aesthetics_score\": true in model_index.json (a refiner UNet)",
                6: ": set \"requires_aesthetics_score\": false in model_index.json (a base UNet)"}.get(found, "")
        raise InputError(f"{what} {model!r}: its UNet's added conditioning takes {takes} features, but "
                         f"{n_ids} time ids (requires_aesthetics_score {aesthetic_score is not None}) of "
                         f"{cfg.addition_time_embed_dim} and the {pooled_dim}-dim pooled text embedding make "
                         f"{cfg.addition_time_embed_dim * n_ids + pooled_dim}{hint}")


@dataclass
class SDXLModel(DDPMModel):
    """An SDXL pipeline: UNet, CLIP-L and CLIP-G (with projection), VAE (or pixels), ᾱ table."""

    unet: torch.nn.Module
    text_encoders: tuple
    tokenizers: tuple
    autoencoder: VAE
    alphas_cumprod: torch.Tensor | None  # (T,) float64; None: a flow-matching scheduler (loading.DDPMModel)
    device: torch.device
    dtype: torch.dtype
    source: str
    scheduler_config: dict = None
    aesthetic_score: float | None = None  # the refiner's 5th time id (requires_aesthetics_score), else None
    zero_empty_prompt: bool = False  # force_zeros_for_empty_prompt: "" is the all-zero condition (the pipeline's uncond)

    family = "sdxl"

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 64) -> Conditions:
        """Both encoders' penultimate states and CLIP-G's pooled embedding of each prompt, in the model dtype. The
        empty prompt, which the toolkit's unconditional scores use, is the all-zero condition where the folder sets
        force_zeros_for_empty_prompt (SDXL base's default): the unconditional branch the pipeline samples with."""
        cond = pooled_conditions(lambda p: encode_sdxl_prompts(p, self.tokenizers, self.text_encoders), prompts,
                                 batch_size, self.dtype)
        empty = torch.tensor([p == "" for p in prompts], dtype=torch.bool)
        if self.zero_empty_prompt and empty.any():
            for part in cond.parts.values():
                part[empty.to(part.device)] = 0
        return cond

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        size = [s * self.autoencoder.downsample for s in x_t.shape[-2:]]  # pixel size of this latent
        time_ids = add_time_ids(*size, len(x_t), x_t.dtype, x_t.device, self.aesthetic_score)
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
    aesthetic_score = AESTHETIC_SCORE if index.get("requires_aesthetics_score") else None
    check_time_ids(unet, enc2.config.projection_dim, aesthetic_score, model, what)
    vae = load_vae(model, what, index, dtype, device)
    latents = latent_space(vae, unet.config.in_channels, model, what, "UNet")
    zero_empty = bool(index.get("force_zeros_for_empty_prompt", True))  # the pipeline's default where unset
    return SDXLModel(unet, (enc1, enc2), (tok1, tok2), latents, ddpm_alphas_cumprod(config),
                     device, dtype, model, config, aesthetic_score, zero_empty)
