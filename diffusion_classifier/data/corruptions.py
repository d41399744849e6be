"""digits_c: the digits test split under common corruptions, in the spirit of CIFAR-10-C.

Every corruption works on an 8x8 image in scikit-learn's native range 0..16 (17 grey levels), at a
severity 1..5, and draws its randomness from a generator seeded by (seed, corruption, severity,
image index): the same image always gets the same corruption, whatever order or subset is read.
The result is clipped to 0..16 and then served like the clean split (0..255 grey, RGB).
"""
from __future__ import annotations

import zlib
from typing import Callable

import numpy as np
from scipy import ndimage

from ..errors import InputError

MAX_VALUE = 16.0  # scikit-learn's digits: integer grey levels 0..16
SEVERITIES = (1, 2, 3, 4, 5)


def _gaussian_noise(x, s, rng):
    return x + rng.normal(0.0, [1.5, 2.5, 3.5, 5.0, 7.0][s - 1], x.shape)


def _shot_noise(x, s, rng):
    lam = [4.0, 2.0, 1.0, 0.5, 0.3][s - 1]  # photons per grey level
    return rng.poisson(x * lam) / lam


def _impulse_noise(x, s, rng):
    amount = [0.03, 0.07, 0.12, 0.18, 0.27][s - 1]
    u = rng.random(x.shape)
    out = x.copy()
    out[u < amount / 2] = 0.0
    out[(u >= amount / 2) & (u < amount)] = MAX_VALUE
    return out


def _speckle_noise(x, s, rng):
    return x + x * rng.normal(0.0, [0.2, 0.35, 0.5, 0.7, 0.9][s - 1], x.shape)


def _gaussian_blur(x, s, rng):
    return ndimage.gaussian_filter(x, [0.4, 0.6, 0.8, 1.0, 1.3][s - 1], mode="constant")


def _disk(radius: float, oversample: int = 8) -> np.ndarray:
    """Normalised anti-aliased disk kernel of the given radius in pixels."""
    half = int(np.ceil(radius))
    c = (np.arange((2 * half + 1) * oversample) + 0.5) / oversample - (half + 0.5)
    inside = (c[:, None] ** 2 + c[None, :] ** 2) <= radius**2
    k = inside.reshape(2 * half + 1, oversample, 2 * half + 1, oversample).mean((1, 3))
    return k / k.sum()


def _defocus_blur(x, s, rng):
    return ndimage.convolve(x, _disk([0.7, 1.0, 1.3, 1.6, 2.0][s - 1]), mode="constant")


def _contrast(x, s, rng):
    c = [0.5, 0.35, 0.25, 0.15, 0.08][s - 1]
    return (x - x.mean()) * c + x.mean()


def _brightness(x, s, rng):
    return x + MAX_VALUE * [0.15, 0.3, 0.45, 0.6, 0.75][s - 1]


def _fog(x, s, rng):
    """A smooth random haze added on top, then rescaled so the strokes keep their brightest level."""
    a = [0.3, 0.5, 0.75, 1.0, 1.4][s - 1] * MAX_VALUE
    field = ndimage.gaussian_filter(rng.random((8, 8)), 1.5, mode="wrap")
    field = (field - field.min()) / max(field.max() - field.min(), 1e-8)
    peak = max(x.max(), 1.0)
    return (x + a * field) * peak / (peak + a)


def _pixelate(x, s, rng):
    size = [6, 5, 4, 3, 2][s - 1]  # 8x8 box-averaged down to size x size, then back up (nearest)
    edges = np.linspace(0, 8, size + 1)
    small = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            r0, r1 = int(np.floor(edges[i])), int(np.ceil(edges[i + 1]))
            c0, c1 = int(np.floor(edges[j])), int(np.ceil(edges[j + 1]))
            small[i, j] = x[r0:r1, c0:c1].mean()
    pos = np.minimum((np.arange(8) + 0.5) * size / 8, size - 1e-9).astype(int)
    return small[pos][:, pos]


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "fog": _fog,
    "pixelate": _pixelate,
}


def check_corruption(corruption: str | None, severity: int | None) -> None:
    """Raise InputError unless (corruption, severity) names a digits_c set."""
    if corruption not in CORRUPTIONS:
        raise InputError(f"--corruption must be one of {', '.join(CORRUPTIONS)}, got {corruption!r}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise InputError(f"--severity must be an integer in 1..5, got {severity!r}")


def image_seed(seed: int, corruption: str, severity: int, index: int) -> np.random.SeedSequence:
    """The per-image seed: depends on the image index, not on which images are read or in what order."""
    return np.random.SeedSequence([seed, zlib.crc32(corruption.encode()), severity, index])


def corrupt(image: np.ndarray, corruption: str, severity: int, index: int, seed: int = 0) -> np.ndarray:
    """One 8x8 image in 0..16 (any numeric dtype) corrupted: float64 in 0..16."""
    check_corruption(corruption, severity)
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"corrupt expects one 2-D image, found shape {x.shape}")
    rng = np.random.default_rng(image_seed(seed, corruption, severity, index))
    return np.clip(CORRUPTIONS[corruption](x, severity, rng), 0.0, MAX_VALUE)


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """A stack (N, 8, 8) in 0..16 corrupted image by image, image i seeded by its index i."""
    return np.stack([corrupt(img, corruption, severity, i, seed) for i, img in enumerate(images)])
