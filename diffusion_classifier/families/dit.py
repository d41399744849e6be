"""DiT (class-conditional): transformer over latent patches with class labels, maybe learned variance; DDPM ε.

DiT-XL/2 (256 and 512 px) loads from the hub's diffusers pipelines, whose VAE is stabilityai/sd-vae-ft-ema;
the shipped digits-dit is an ordinary folder in this layout, in pixel space, with its label names
in model_index.json's `id2label`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.sizes import size_name
from ..errors import InputError
from ..loading import TINY_MODELS, VAE, DDPMModel, frozen, latent_space, load_part, load_vae, pipeline_index, require_components, scheduler_config
from ..objectives import is_flow_config, objective_from_config
from ..vb import alphas_cumprod_from_config

DIT_MODELS = {256: "facebook/DiT-XL-2-256", 512: "facebook/DiT-XL-2-512", "tiny": str(TINY_MODELS / "digits-dit"),
              "fashion": str(TINY_MODELS / "fashion-dit")}  # the shipped tiny models: digits, Fashion-MNIST


def resolve_dit_model(image_size: int | None = 256, model: str | None = None) -> str:
    """The hub id or folder of the DiT to load: `model` if given (a name of a shipped one, 'tiny', resolves to its
    folder), else DiT-XL/2."""
    if model:
        return DIT_MODELS[model] if isinstance(model, str) and model in DIT_MODELS else model
    if image_size not in DIT_MODELS:
        raise InputError(f"no published DiT-XL/2 for --image-size {image_size}; pass --model PATH_OR_ID")
    return DIT_MODELS[image_size]


@dataclass
class ClassConditionalModel(DDPMModel):
    """A DiT-format model: class-conditional transformer (maybe learned variance), VAE (or pixels), ᾱ."""

    transformer: torch.nn.Module
    autoencoder: VAE
    alphas_cumprod: torch.Tensor  # (T,) float64
    device: torch.device
    dtype: torch.dtype
    source: str
    id2label: dict[int, str]
    scheduler_config: dict = None

    family = "dit"
    backbone_name = "transformer"

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

    def latent_shape(self, img_size: int | tuple[int, int]) -> tuple[int, int, int]:
        shape = super().latent_shape(img_size)
        side = self.transformer.config.sample_size
        if shape[1:] != (side, side):  # DiT's position embedding fixes the size, a square
            raise InputError(f"this DiT takes {self.native_size}px images (latent {side}), got {size_name(img_size)}")
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
    from diffusers import DiTTransformer2DModel

    what = "DiT model"
    device = torch.device(device)
    index = pipeline_index(model, what)
    name = index.get("_class_name")
    if name not in (None, "DiTPipeline"):  # a text-to-image pipeline's transformer is not a DiT
        raise InputError(f"{model!r} is a {name} (model_index.json), not a class-conditional DiTPipeline: score "
                         f"text-to-image models with eval_prob_adaptive.py")
    require_components(index, model, what, ("transformer", "scheduler"))
    config = scheduler_config(model, what)
    if is_flow_config(config):  # its ᾱ table would be read from β defaults: refuse rather than score another objective
        raise InputError(f"{what} {model!r}: its scheduler is a {config.get('_class_name')} (flow matching); expected "
                         f"a DDPM-family scheduler with a β schedule (DDPM, DDIM, DPM-Solver, ...), as DiT is trained")
    objective_from_config(config)  # an unknown objective fails before the weights load
    transformer = frozen(load_part(DiTTransformer2DModel, model, what, subfolder="transformer", torch_dtype=dtype), device)
    ae = load_vae(vae, "VAE", {}, dtype, device, None) if vae is not None else load_vae(model, what, index, dtype, device)
    id2label = {int(k): v for k, v in (index.get("id2label") or {}).items()}
    latents = latent_space(ae, transformer.config.in_channels, model, what, "transformer", vae)
    return ClassConditionalModel(transformer, latents, alphas_cumprod_from_config(config), device, dtype, model, id2label,
                                 config)
