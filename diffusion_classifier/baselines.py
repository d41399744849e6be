"""Contrastive image-text baselines (CLIP through transformers, OpenCLIP) as `score(images, captions)`.

A scorer returns logits (n_captions, n_images) indexed [caption, image], float64 on the CPU: the same
orientation as the diffusion tasks' scores (higher = better match), so every task compares them alike.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .errors import InputError, MissingError, MissingPackageError

CLIP_VERSIONS = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L14": "openai/clip-vit-large-patch14",  # the reference's spelling
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}
OPENCLIP_VERSION = "ViT-H-14"
OPENCLIP_PRETRAINED = "laion2b_s32b_b79k"


def resolve_clip_model(version: str = "ViT-L/14", model: str | None = None) -> str:
    """The transformers CLIP hub id or folder: `model` if given, else the id of the OpenAI CLIP `version`."""
    if model:
        return str(model)
    if version not in CLIP_VERSIONS:
        raise InputError(f"unknown CLIP version {version!r}; expected one of {', '.join(CLIP_VERSIONS)} (or --model_path)")
    return CLIP_VERSIONS[version]


def _logits_to_scores(logits_per_image: torch.Tensor) -> torch.Tensor:
    """(image, caption) logits -> scores (caption, image), float64 on the CPU."""
    return logits_per_image.detach().float().cpu().double().T.contiguous()


def load_clip(model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Callable:
    """A transformers CLIP model as `score(images, captions) -> (n_captions, n_images)` logits [caption, image]."""
    from transformers import CLIPModel, CLIPProcessor

    device = torch.device(device)
    local = Path(model).expanduser().exists()
    if not local and not _looks_like_hub_id(model):
        raise MissingError(f"CLIP folder {model!r} does not exist; expected a transformers CLIP folder "
                                f"(config.json, weights, tokenizer and preprocessor files) or a hub id")
    try:
        clip = CLIPModel.from_pretrained(model, torch_dtype=dtype).to(device).eval().requires_grad_(False)
        processor = CLIPProcessor.from_pretrained(model)
    except (OSError, ValueError) as e:
        if local:
            first = str(e).splitlines()[0] if str(e) else ""
            raise MissingError(f"CLIP folder {model!r} lacks its parts ({type(e).__name__}: {first}); expected "
                                    f"a transformers CLIP folder with its tokenizer and image processor") from None
        raise MissingError(f"cannot load CLIP model {model!r}: it is not a local folder and not in the Hugging "
                                f"Face cache, and the hub is unreachable; on a machine with network run "
                                f"`huggingface-cli download {model}` (or pass --model_path /path/to/folder)") from None

    @torch.no_grad()
    def score(images: list[Image.Image], captions: list[str]) -> torch.Tensor:
        inputs = processor(text=list(captions), images=list(images), return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return _logits_to_scores(clip(**inputs).logits_per_image)  # logits_per_image: (image, caption)

    return score


def _looks_like_hub_id(model: str) -> bool:
    return not os.path.isabs(model) and not model.startswith((".", "~")) and model.count("/") == 1


def load_openclip(arch: str = OPENCLIP_VERSION, pretrained: str = OPENCLIP_PRETRAINED,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Callable:
    """An OpenCLIP model as `score(images, captions) -> (n_captions, n_images)` logits; `pretrained` is a tag or checkpoint."""
    try:
        import open_clip
    except ImportError:
        raise MissingPackageError("--model openclip needs the open_clip package: pip install open_clip_torch "
                          "(or pip install 'diffusion-classifier[clip]')") from None
    device = torch.device(device)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(arch)
    except RuntimeError as e:  # open_clip reports unknown architectures / tags as RuntimeError
        raise InputError(f"open_clip cannot build {arch!r} with pretrained {pretrained!r}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # missing checkpoint files, unreachable hub
        raise MissingError(f"cannot load OpenCLIP {arch} weights {pretrained!r} ({type(e).__name__}); the hub is "
                                f"unreachable or the file is missing: pass --model_path /path/to/checkpoint") from None
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @torch.no_grad()
    def score(images: list[Image.Image], captions: list[str]) -> torch.Tensor:
        pixels = torch.stack([preprocess(im) for im in images]).to(device, dtype)  # (n_images, 3, H, W)
        tokens = tokenizer(list(captions)).to(device)
        img = model.encode_image(pixels).float()
        txt = model.encode_text(tokens).float()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return _logits_to_scores(model.logit_scale.exp().float() * img @ txt.T)  # (image, caption)

    return score


def load_baseline(model: str, version: str, model_path: str | None = None, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> tuple[str, Callable]:
    """(the weights' source, `score(images, captions)`) of `model` 'clip' (transformers; `version` an OpenAI CLIP
    name, or `model_path` a folder or hub id) or 'openclip' (`version` an architecture, `model_path` a
    pretrained tag or checkpoint; not given: OPENCLIP_PRETRAINED)."""
    if model == "clip":
        source = resolve_clip_model(version, model_path)
        return source, load_clip(source, device, dtype)
    if model == "openclip":
        source = model_path or OPENCLIP_PRETRAINED
        return source, load_openclip(version, source, device, dtype)
    raise InputError(f"a contrastive baseline is clip or openclip, got {model!r}")
