"""Image pre-processing: Stable Diffusion's resize and centre crop (or a plain resize to a non-square (H, W)) and
ADM/DiT's centre crop, each ending in a (3, H, W) tensor in [-1, 1]."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torchvision.transforms as T
from PIL import Image

from ..errors import InputError
from .images import to_rgb
from .sizes import image_size

INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "lanczos": T.InterpolationMode.LANCZOS,
}


class ADMCenterCrop:
    """Transform form of adm_center_crop (a class, so that data-loader workers can pickle it)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        return adm_center_crop(to_rgb(img), self.size)


def sd_transform(size: int | tuple[int, int], interpolation: str = "bicubic") -> Callable:
    """Stable Diffusion pre-processing: resize, centre crop, RGB, [0, 1] tensor, then [-1, 1].

    A square size S resizes the short side to S and crops the centre; (H, W) with H != W resizes to (H, W), no crop."""
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    size = image_size(size)
    crop = [T.CenterCrop(size)] if isinstance(size, int) else []  # (H, W): Resize gives exactly that size
    return T.Compose([
        to_rgb,  # first, as image files are decoded: palette, 1-bit and deep greyscale images resize as RGB
        T.Resize(size, interpolation=INTERPOLATIONS[interpolation]),
        *crop,
        T.ToTensor(),
        T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ])


def adm_center_crop(pil_image: Image.Image, size: int) -> Image.Image:
    """ADM/DiT centre crop: halve with BOX while the short side >= 2*size, bicubic to short side = size, crop."""
    while min(*pil_image.size) >= 2 * size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top:top + size, left:left + size])


def dit_transform(size: int) -> Callable:
    """DiT pre-processing: ADM centre crop, RGB, [0, 1] tensor, then [-1, 1]."""
    return T.Compose([
        ADMCenterCrop(size),
        T.ToTensor(),
        T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ])
