"""Model families behind one interface, detected from a pipeline's model_index.json `_class_name`.

Every family's model offers `encode_prompts(prompts)`, `encode_images(pixels)`, `denoiser(x_t, t, cond)`,
`make_objective(latent_shape, error_space, grid)`, `latent_shape(img_size)`, `native_size`, `T` and
`backbone`. Adding a family is one module with a loader and one entry in FAMILIES.
"""
from __future__ import annotations

import importlib

import torch

from ..errors import InputError
from ..models import SD_VERSIONS, _pipeline_index

# family -> (module:loader, model_index.json _class_name values)
FAMILIES = {
    "sd": ("diffusion_classifier.models:load_text_conditional",
           ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")),
    "sdxl": ("diffusion_classifier.families.sdxl:load_sdxl",
             ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")),
    "sd3": ("diffusion_classifier.families.sd3:load_sd3",
            ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")),
    "flux": ("diffusion_classifier.families.flux:load_flux", ("FluxPipeline", "FluxImg2ImgPipeline")),
}


def detect_family(index: dict, model: str = "") -> str:
    """The family of a pipeline from its model_index.json; InputError naming an unknown one."""
    name = index.get("_class_name")
    for family, (_, class_names) in FAMILIES.items():
        if name in class_names:
            return family
    if name is None and "unet" in index and "text_encoder" in index:
        return "sd"  # hand-written folders without a class name
    known = ", ".join(n for _, names in FAMILIES.values() for n in names[:1])
    if name == "DiTPipeline":
        raise InputError(f"{model!r} is a class-conditional DiT, not a text-to-image model: use eval_prob_dit.py")
    raise InputError(f"unknown model family: {model!r} is a {name or 'pipeline without _class_name'} "
                     f"(model_index.json); text-to-image families known: {known}")


def resolve_model(version: str | None = None, model: str | None = None) -> str:
    """The hub id or folder to load: `model` if given ('tiny' or any --version id works too), else `version`'s."""
    if model:
        return SD_VERSIONS.get(model, model)
    if version not in SD_VERSIONS:
        raise InputError(f"unknown model version {version!r}; expected one of {', '.join(SD_VERSIONS)}")
    return SD_VERSIONS[version]


def load_model(model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               attention: str = "sdpa", no_t5: bool = False, guidance: float | None = None):
    """Load any text-to-image family from a hub id or local diffusers folder (only what scoring needs).

    no_t5: skip SD3's T5 encoder (its embeddings become zeros, as diffusers does without it).
    guidance: the value of Flux-dev's guidance embedding (default the pipeline's 3.5).
    """
    family = detect_family(_pipeline_index(model, "model"), model)
    path, fn = FAMILIES[family][0].split(":")
    loader = getattr(importlib.import_module(path), fn)
    if family == "sd":
        return loader(model, device, dtype, attention)
    return loader(model, device, dtype, attention, no_t5=no_t5, guidance=guidance)
