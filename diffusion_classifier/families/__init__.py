"""Model families behind one interface, detected from a pipeline's model_index.json `_class_name`.

Every family's model offers `encode_images(pixels)`, `denoiser(x_t, t, cond)`,
`make_objective(latent_shape, error_space, grid)`, `latent_shape(img_size)`, `native_size`, `T` and
`backbone`; text-to-image families add `encode_prompts(prompts)`, class-conditional ones take class
labels as conditions. Adding a family is one module here with its model class and loader (over the
shared `diffusion_classifier.loading`) and one entry in FAMILIES; its --version ids go in SD_VERSIONS.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

import torch

from ..errors import InputError
from ..loading import TINY_MODELS, pipeline_index


class Family(NamedTuple):
    """A family's loader ('module:function', imported when used), its pipelines' `_class_name`s, its conditions."""

    loader: str
    class_names: tuple[str, ...]
    conditioning: str  # "text" (prompts) or "class" (labels)


FAMILIES = {
    "sd": Family("diffusion_classifier.families.sd:load_text_conditional",
                 ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"), "text"),
    "sdxl": Family("diffusion_classifier.families.sdxl:load_sdxl",
                   ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"), "text"),
    "sd3": Family("diffusion_classifier.families.sd3:load_sd3",
                  ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"), "text"),
    "flux": Family("diffusion_classifier.families.flux:load_flux", ("FluxPipeline", "FluxImg2ImgPipeline"), "text"),
    "dit": Family("diffusion_classifier.families.dit:load_class_conditional", ("DiTPipeline",), "class"),
}

# --version ids of the text-to-image families -> hub id or shipped folder
SD_VERSIONS = {
    "1-1": "CompVis/stable-diffusion-v1-1",
    "1-2": "CompVis/stable-diffusion-v1-2",
    "1-3": "CompVis/stable-diffusion-v1-3",
    "1-4": "CompVis/stable-diffusion-v1-4",
    "1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",  # runwayml's id is gone from the hub
    "2-0": "stabilityai/stable-diffusion-2-base",
    "2-1": "stabilityai/stable-diffusion-2-1-base",
    "2-0-768": "stabilityai/stable-diffusion-2",  # v-prediction, 768 px
    "2-1-768": "stabilityai/stable-diffusion-2-1",  # v-prediction, 768 px
    "xl-1-0": "stabilityai/stable-diffusion-xl-base-1.0",
    "3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
    "3-5-medium": "stabilityai/stable-diffusion-3.5-medium",
    "3-5-large": "stabilityai/stable-diffusion-3.5-large",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
    "tiny": str(TINY_MODELS / "digits-sd"),
    "tiny-flow": str(TINY_MODELS / "tiny-flow"),  # flow matching, SD3 layout, pixel space
    "fashion": str(TINY_MODELS / "fashion-sd"),  # Fashion-MNIST, 28x28 pixels
    "fashion-flow": str(TINY_MODELS / "fashion-flow"),  # Fashion-MNIST, flow matching, SD3 layout, 28x28 pixels
    "fashion-flow-unet": str(TINY_MODELS / "fashion-flow-unet"),  # fashion-sd's UNet and recipe, flow matching
    "fashion-pairs": str(TINY_MODELS / "fashion-pairs"),  # two Fashion-MNIST items side by side, 28x56 pixels
}


def detect_family(index: dict, model: str = "") -> str:
    """The text-to-image family of a pipeline from its model_index.json; InputError naming an unknown one."""
    name = index.get("_class_name")
    for family, entry in FAMILIES.items():
        if name in entry.class_names:
            if entry.conditioning == "class":
                raise InputError(f"{model!r} is a class-conditional DiT, not a text-to-image model: use eval_prob_dit.py")
            return family
    if name is None and "unet" in index and "text_encoder" in index:
        return "sd"  # hand-written folders without a class name
    known = ", ".join(f.class_names[0] for f in FAMILIES.values() if f.conditioning == "text")
    raise InputError(f"unknown model family: {model!r} is a {name or 'pipeline without _class_name'} "
                     f"(model_index.json); text-to-image families known: {known}")


def resolve_sd_model(version: str = "2-0", model: str | None = None) -> str:
    """The hub id or folder to load: `model` if given ('tiny' is the shipped digits-sd), else the id of `version`."""
    if model:
        return SD_VERSIONS["tiny"] if model == "tiny" else model
    return resolve_model(version)


def resolve_model(version: str | None = None, model: str | None = None) -> str:
    """The hub id or folder to load: `model` if given ('tiny' or any --version id works too), else `version`'s."""
    if model:
        return SD_VERSIONS.get(model, model)
    if version not in SD_VERSIONS:
        raise InputError(f"unknown model version {version!r}; expected one of {', '.join(SD_VERSIONS)}")
    return SD_VERSIONS[version]


def loader(family: str):
    """The load function of a family in FAMILIES (its module is imported now)."""
    path, fn = FAMILIES[family].loader.split(":")
    return getattr(importlib.import_module(path), fn)


def load_model(model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               attention: str = "sdpa", no_t5: bool = False, guidance: float | None = None):
    """Load any text-to-image family from a hub id or local diffusers folder (only what scoring needs).

    no_t5: skip SD3's T5 encoder (its embeddings become zeros, as diffusers does without it).
    guidance: the value of Flux-dev's guidance embedding (default the pipeline's 3.5).
    """
    family = detect_family(pipeline_index(model, "model"), model)
    check_options(family, model, no_t5, guidance)
    return loader(family)(model, device, dtype, attention, no_t5=no_t5, guidance=guidance)


def check_options(family: str, model: str, no_t5: bool = False, guidance: float | None = None) -> None:
    """InputError for an option the family does not use (a run would be named after a setting it never applied)."""
    if no_t5 and family != "sd3":
        raise InputError(f"no_t5 drops the T5 encoder of SD3/SD3.5 models; {model!r} is of family "
                         f"{family!r}: leave no_t5 out")
    if guidance is not None and family != "flux":
        raise InputError(f"guidance sets the guidance embedding of Flux-dev models; {model!r} is of "
                         f"family {family!r}: leave guidance out")


def load_any_model(model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   attention: str = "sdpa", no_t5: bool = False, guidance: float | None = None):
    """load_model, or a class-conditional family's model (DiT, scored with class labels: dit.load_class_conditional)
    where the pipeline `model` is one."""
    name = pipeline_index(model, "model").get("_class_name")
    if any(name in f.class_names for f in FAMILIES.values() if f.conditioning == "class"):
        from .dit import load_class_conditional

        check_options("dit", model, no_t5, guidance)
        return load_class_conditional(model, device, dtype)
    return load_model(model, device, dtype, attention, no_t5=no_t5, guidance=guidance)
