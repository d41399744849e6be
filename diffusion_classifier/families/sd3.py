"""Stable Diffusion 3 / 3.5: MMDiT transformer, two CLIP encoders (+ optional T5), flow matching.

Prompts are encoded as StableDiffusion3Pipeline.encode_prompt does: each CLIP's penultimate hidden
state, concatenated over the feature axis and zero-padded to T5's width, followed by T5's last
hidden state (zeros when T5 is dropped or absent); the pooled embedding is both CLIPs' projected
outputs concatenated. Latents are (VAE mean - shift_factor) × scaling_factor, or pixels without a VAE.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.sizes import size_name
from ..engine import Conditions
from ..errors import InputError
from ..loading import VAE, ModelGeometry, frozen, has_component, latent_space, load_part, load_vae, one_truncation_warning, pipeline_index, pooled_conditions, require_components, scheduler_config, set_attention, tokenize
from ..objectives import objective_from_config
from .joint_attention import RepeatedLastKeyAttention

T5_MAX_LENGTH = 256  # the pipeline's default max_sequence_length


def clip_embeds(tokenizer, text_encoder, prompts: list[str], max_length: int,
                device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate hidden state (K, L, D), projected pooled output (K, P)) of one CLIP encoder."""
    device = device or next(text_encoder.parameters()).device
    ids = tokenize(tokenizer, prompts, max_length, "CLIP tokenizer")
    out = text_encoder(ids.to(device), output_hidden_states=True)
    return out.hidden_states[-2], out[0]


def t5_embeds(tokenizer, text_encoder, prompts: list[str], max_length: int, device=None) -> torch.Tensor:
    """Last hidden state of T5 for max-length padded prompts: (K, max_length, D)."""
    device = device or next(text_encoder.parameters()).device
    ids = tokenize(tokenizer, prompts, max_length, "T5 tokenizer")
    return text_encoder(ids.to(device))[0]


@one_truncation_warning()
def encode_sd3_prompts(prompts: list[str], tokenizers, text_encoders, joint_attention_dim: int,
                       t5_max_length: int = T5_MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3 prompt embeddings (K, 77 + t5_max_length, joint_attention_dim) and pooled embeddings (K, P1 + P2).

    `tokenizers` and `text_encoders` are (CLIP-L, CLIP-G, T5) triples, as loaded or freshly built;
    a missing T5 (None) gives zeros in its place, as the pipeline does without text_encoder_3.
    The CLIP length is the first tokenizer's model_max_length. Differentiable (for training the
    encoders); scoring calls it under torch.no_grad().
    """
    prompts = list(prompts)
    max_length = tokenizers[0].model_max_length
    h1, p1 = clip_embeds(tokenizers[0], text_encoders[0], prompts, max_length)
    h2, p2 = clip_embeds(tokenizers[1], text_encoders[1], prompts, max_length)
    clip = torch.cat([h1, h2], dim=-1)  # (K, 77, D1 + D2)
    if text_encoders[2] is None or tokenizers[2] is None:
        t5 = clip.new_zeros(len(prompts), t5_max_length, joint_attention_dim)
    else:
        t5 = t5_embeds(tokenizers[2], text_encoders[2], prompts, t5_max_length).to(clip.dtype)
    clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2), torch.cat([p1, p2], dim=-1)


@dataclass
class SD3Model(ModelGeometry):
    """An SD3/SD3.5 pipeline: transformer, CLIP-L/CLIP-G (+ T5), VAE (or pixels), flow scheduler config."""

    transformer: torch.nn.Module
    text_encoders: tuple  # (CLIP-L, CLIP-G, T5 or None)
    tokenizers: tuple
    autoencoder: VAE
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    source: str
    t5_max_length: int = T5_MAX_LENGTH
    compact_t5_zeros: bool = False  # the transformer runs RepeatedLastKeyAttention(t5_max_length)

    family = "sd3"
    backbone_name = "transformer"

    @property
    def token_patch(self) -> int:
        return self.transformer.config.patch_size

    @property
    def size_multiple(self) -> int:
        return self.transformer.config.patch_size

    def latent_shape(self, img_size: int | tuple[int, int]) -> tuple[int, int, int]:
        shape = super().latent_shape(img_size)
        patches = self.transformer.config.pos_embed_max_size  # the position embedding's side, in patches
        if patches is not None and max(shape[1:]) > patches * self.token_patch:
            side = patches * self.token_patch * self.autoencoder.downsample
            raise InputError(f"this model takes images of at most {side} px a side (its position embedding covers "
                             f"{patches} patches of {self.token_patch * self.autoencoder.downsample} px), got "
                             f"{size_name(img_size)}")
        return shape

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 64) -> Conditions:
        """Prompt and pooled embeddings of each prompt, in the model dtype."""
        width = self.transformer.config.joint_attention_dim
        return pooled_conditions(lambda p: encode_sd3_prompts(p, self.tokenizers, self.text_encoders, width,
                                                              self.t5_max_length), prompts, batch_size, self.dtype)

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        embeds = cond.prompt_embeds
        if self.compact_t5_zeros:  # the identical zero rows of the absent T5 as one row (joint_attention.py)
            embeds = embeds[:, : embeds.shape[1] - self.t5_max_length + 1]
        return self.transformer(hidden_states=x_t, timestep=t, encoder_hidden_states=embeds,  # t = σ·T, float32
                                pooled_projections=cond.pooled).sample


def load_sd3(model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             attention: str = "sdpa", no_t5: bool = False, t5_max_length: int = T5_MAX_LENGTH, **_) -> SD3Model:
    """Load an SD3/SD3.5 folder or hub id; T5 is skipped with `no_t5` or when the folder lists it as null."""
    from diffusers import SD3Transformer2DModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    what = "Stable Diffusion 3 model"
    device = torch.device(device)
    index = pipeline_index(model, what)
    require_components(index, model, what, ("transformer", "text_encoder", "text_encoder_2", "tokenizer",
                                            "tokenizer_2", "scheduler"))
    config = scheduler_config(model, what)
    objective_from_config(config, image_seq_len=1)  # a resolution-dependent shift is set per image size when scoring
    transformer = frozen(load_part(SD3Transformer2DModel, model, what, subfolder="transformer", torch_dtype=dtype), device)
    set_attention(transformer, attention)
    encoders, tokenizers = [], []
    for enc, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        encoders.append(frozen(load_part(CLIPTextModelWithProjection, model, what, subfolder=enc, torch_dtype=dtype), device))
        tokenizers.append(load_part(CLIPTokenizer, model, what, subfolder=tok))
    t5 = t5_tok = None
    if not no_t5 and has_component(index, "text_encoder_3"):
        require_components(index, model, what, ("tokenizer_3",))
        t5 = frozen(load_part(T5EncoderModel, model, what, subfolder="text_encoder_3", torch_dtype=dtype), device)
        t5_tok = load_part(AutoTokenizer, model, what, subfolder="tokenizer_3")
    vae = load_vae(model, what, index, dtype, device)
    compact = t5 is None and attention == "sdpa" and t5_max_length > 1
    if compact:  # without T5 its rows are identical zeros: one row with a log-count attention bias, same numbers
        transformer.set_attn_processor(RepeatedLastKeyAttention(t5_max_length))
    latents = latent_space(vae, transformer.config.in_channels, model, what, "transformer")
    return SD3Model(transformer, (*encoders, t5), (*tokenizers, t5_tok), latents,
                    config, device, dtype, model, t5_max_length, compact)
