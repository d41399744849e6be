"""Model loading: Stable Diffusion (text-conditional) and DiT (class-conditional) through diffusers.

Both load from a hub id or a local diffusers folder; the shipped tiny digits models are ordinary
local folders in the same layouts, with `"vae": [null, null]` in model_index.json meaning the
model works in pixel space.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError, MissingError, MissingPackageError

TINY_MODELS = Path(__file__).parent / "tiny_models"

SD_VERSIONS = {
    "1-1": "CompVis/stable-diffusion-v1-1",
    "1-2": "CompVis/stable-diffusion-v1-2",
    "1-3": "CompVis/stable-diffusion-v1-3",
    "1-4": "CompVis/stable-diffusion-v1-4",
    "1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",  # runwayml's id is gone from the hub
    "2-0": "stabilityai/stable-diffusion-2-base",
    "2-1": "stabilityai/stable-diffusion-2-1-base",
    "tiny": str(TINY_MODELS / "digits-sd"),
}
DIT_MODELS = {256: "facebook/DiT-XL-2-256", 512: "facebook/DiT-XL-2-512", "tiny": str(TINY_MODELS / "digits-dit")}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def default_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The --dtype flag's dtype, or by default float16 on a GPU and float32 elsewhere (slow or unsupported there)."""
    return DTYPES[name] if name else (torch.float16 if device.type == "cuda" else torch.float32)


def resolve_sd_model(version: str = "2-0", model: str | None = None) -> str:
    """The hub id or folder to load: `model` if given, else the id of the SD `version`."""
    if model:
        return SD_VERSIONS["tiny"] if model == "tiny" else model
    if version not in SD_VERSIONS:
        raise InputError(f"unknown Stable Diffusion version {version!r}; expected one of {', '.join(SD_VERSIONS)}")
    return SD_VERSIONS[version]


def resolve_dit_model(image_size: int | None = 256, model: str | None = None) -> str:
    """The hub id or folder of the DiT to load: `model` if given ('tiny' is the shipped one), else DiT-XL/2."""
    if model:
        return DIT_MODELS["tiny"] if model == "tiny" else model
    if image_size not in DIT_MODELS:
        raise InputError(f"no published DiT-XL/2 for --image-size {image_size}; pass --model PATH_OR_ID")
    return DIT_MODELS[image_size]


def _is_local(model: str) -> bool:
    return os.path.isabs(model) or model.startswith((".", "~")) or os.path.exists(model) or model.count("/") != 1


def _not_found(model: str, what: str, err: Exception) -> FileNotFoundError:
    if _is_local(model):
        return MissingError(f"{what} folder {model!r} does not exist or lacks its parts ({err.__class__.__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}); expected a diffusers pipeline folder")
    return MissingError(
        f"cannot load {what} {model!r}: it is not a local folder and not in the Hugging Face cache, and the hub is "
        f"unreachable; on a machine with network run `huggingface-cli download {model}` (or pass --model /path/to/folder)"
    )


def _load(cls, model: str, what: str, **kwargs):
    try:
        return cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as e:  # hub/cache misses and missing files surface as OSError
        raise _not_found(model, what, e) from None


def _pipeline_index(model: str, what: str) -> dict:
    """model_index.json of a pipeline folder or hub id (from the cache when offline)."""
    local = Path(model).expanduser()
    if local.is_dir():
        path = local / "model_index.json"
        if not path.is_file():
            raise MissingError(f"{what} folder {model!r} has no model_index.json; expected a diffusers pipeline folder")
        return json.loads(path.read_text())
    if _is_local(model):
        raise MissingError(f"{what} folder {model!r} does not exist; expected a diffusers pipeline folder")
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(model))
    except Exception as e:  # noqa: BLE001 - every hub failure becomes one message
        raise _not_found(model, what, e) from None


def _has_component(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


def _frozen(module: torch.nn.Module, device) -> torch.nn.Module:
    return module.to(device).eval().requires_grad_(False)


def _alphas_cumprod(model: str, what: str) -> torch.Tensor:
    from diffusers import DDPMScheduler

    from .vb import betas_from_config

    try:
        config = DDPMScheduler.load_config(model, subfolder="scheduler")
    except Exception as e:  # noqa: BLE001
        raise _not_found(model, what, e) from None
    return torch.cumprod(1.0 - betas_from_config(dict(config)), 0)  # float64


def _set_attention(module: torch.nn.Module, attention: str) -> None:
    if attention == "sdpa":
        from diffusers.models.attention_processor import AttnProcessor2_0

        module.set_attn_processor(AttnProcessor2_0())
    elif attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise MissingPackageError("attention 'xformers' needs the xformers package: pip install xformers") from None
        module.enable_xformers_memory_efficient_attention()
    else:
        raise InputError(f"attention must be 'sdpa' or 'xformers', got {attention!r}")


class _VAE:
    """Image (N,3,H,W) in [-1,1] -> latent: the VAE posterior mean × its scaling factor, or the pixels."""

    def __init__(self, vae):
        self.vae = vae
        if vae is None:
            self.downsample, self.channels, self.scaling_factor = 1, 3, 1.0
        else:
            self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
            self.channels = vae.config.latent_channels
            self.scaling_factor = vae.config.scaling_factor

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        if self.vae is None:
            return pixels.float()
        p = next(self.vae.parameters())
        out = [self.vae.encode(pixels[i : i + batch_size].to(p.device, p.dtype)).latent_dist.mean
               for i in range(0, len(pixels), batch_size)]
        return torch.cat(out).float() * self.scaling_factor  # (N, C, H/f, W/f)

    def check_size(self, img_size: int) -> None:
        if img_size % self.downsample:
            raise InputError(f"image size must be divisible by the VAE's downsampling factor {self.downsample}, got {img_size}")


class _ModelGeometry:
    """What both model kinds share: the ᾱ table, the native size and the image -> latent mapping."""

    autoencoder: _VAE
    alphas_cumprod: torch.Tensor

    @property
    def backbone(self) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def native_size(self) -> int:
        return self.backbone.config.sample_size * self.autoencoder.downsample

    @property
    def T(self) -> int:
        return len(self.alphas_cumprod)

    def latent_shape(self, img_size: int) -> tuple[int, int, int]:
        self.autoencoder.check_size(img_size)
        s = img_size // self.autoencoder.downsample
        return (self.autoencoder.channels, s, s)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(pixels)


@dataclass
class TextConditionalModel(_ModelGeometry):
    """A Stable-Diffusion-format model: UNet, CLIP text encoder and tokenizer, VAE (or pixels), ᾱ table."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    autoencoder: _VAE
    alphas_cumprod: torch.Tensor  # (T,) float64
    device: torch.device
    dtype: torch.dtype
    source: str

    @property
    def backbone(self) -> torch.nn.Module:
        return self.unet

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Last hidden state of the text encoder for max-length padded prompts: (K, L, D)."""
        out = []
        for i in range(0, len(prompts), batch_size):
            tok = self.tokenizer(prompts[i : i + batch_size], padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt")
            out.append(self.text_encoder(tok.input_ids.to(self.device))[0])
        return torch.cat(out).to(self.dtype)

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, encoder_hidden_states=cond).sample


def load_text_conditional(
    model: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    attention: str = "sdpa",
) -> TextConditionalModel:
    """Load a Stable-Diffusion-format pipeline folder or hub id (only what scoring needs)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    what = "Stable Diffusion model"
    device = torch.device(device)
    index = _pipeline_index(model, what)
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not _has_component(index, part):
            raise MissingError(f"{what} {model!r} has no {part} in its model_index.json; expected a Stable Diffusion pipeline")
    unet = _frozen(_load(UNet2DConditionModel, model, what, subfolder="unet", torch_dtype=dtype), device)
    _set_attention(unet, attention)
    text_encoder = _frozen(_load(CLIPTextModel, model, what, subfolder="text_encoder", torch_dtype=dtype), device)
    tokenizer = _load(CLIPTokenizer, model, what, subfolder="tokenizer")
    vae = None
    if _has_component(index, "vae"):
        from diffusers import AutoencoderKL  # imports every autoencoder family: only when there is one to load

        vae = _frozen(_load(AutoencoderKL, model, what, subfolder="vae", torch_dtype=dtype), device)
    return TextConditionalModel(unet, text_encoder, tokenizer, _VAE(vae), _alphas_cumprod(model, what),
                                device, dtype, model)


@dataclass
class ClassConditionalModel(_ModelGeometry):
    """A DiT-format model: class-conditional transformer (maybe learned variance), VAE (or pixels), ᾱ."""

    transformer: torch.nn.Module
    autoencoder: _VAE
    alphas_cumprod: torch.Tensor  # (T,) float64
    device: torch.device
    dtype: torch.dtype
    source: str
    id2label: dict[int, str]

    @property
    def num_classes(self) -> int:
        return self.transformer.config.num_embeds_ada_norm

    @property
    def null_class(self) -> int:
        """The label of the unconditional embedding (present when trained with class dropout)."""
        return self.num_classes

    @property
    def learned_variance(self) -> bool:
        return self.transformer.config.out_channels == 2 * self.transformer.config.in_channels

    @property
    def backbone(self) -> torch.nn.Module:
        return self.transformer

    def latent_shape(self, img_size: int) -> tuple[int, int, int]:
        shape = super().latent_shape(img_size)
        if shape[1] != self.transformer.config.sample_size:  # DiT's position embedding fixes the size
            raise InputError(f"this DiT takes {self.native_size}px images (latent {self.transformer.config.sample_size}), got {img_size}")
        return shape

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.transformer(x_t, timestep=t, class_labels=cond).sample


def load_class_conditional(
    model: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    vae: str | None = None,
) -> ClassConditionalModel:
    """Load a DiT pipeline folder or hub id; `vae` overrides the pipeline's own VAE (hub id or folder)."""
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    what = "DiT model"
    device = torch.device(device)
    index = _pipeline_index(model, what)
    if not _has_component(index, "transformer"):
        raise MissingError(f"{what} {model!r} has no transformer in its model_index.json; expected a DiT pipeline")
    transformer = _frozen(_load(DiTTransformer2DModel, model, what, subfolder="transformer", torch_dtype=dtype), device)
    ae = None
    if vae is not None:
        ae = _frozen(_load(AutoencoderKL, vae, "VAE", torch_dtype=dtype), device)
    elif _has_component(index, "vae"):
        ae = _frozen(_load(AutoencoderKL, model, what, subfolder="vae", torch_dtype=dtype), device)
    id2label = {int(k): v for k, v in (index.get("id2label") or {}).items()}
    return ClassConditionalModel(transformer, _VAE(ae), _alphas_cumprod(model, what), device, dtype, model, id2label)
