"""Noise banks: the fixed ε shared by every candidate, saved to disk or drawn from a seed."""
from __future__ import annotations

import operator
import warnings
from pathlib import Path

import torch

from .errors import InputError, MissingError

REFERENCE_SEED = 42
REFERENCE_ROWS = 1024


def make_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """n standard normal draws of `shape` from a private generator: (n, *shape) float32."""
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or not -2**63 <= operator.index(seed) < 2**64:
        raise InputError(f"seed must be an integer in -2**63..2**64-1, found {seed!r}")
    g = torch.Generator().manual_seed(operator.index(seed))  # same stream as torch.manual_seed(seed) on the CPU
    return torch.randn(n, *shape, generator=g)


def reference_noise(img_size: int | tuple[int, int], channels: int = 4, downsample: int = 8,
                    n: int = REFERENCE_ROWS, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """The bank scripts/save_noise.py writes: 1024 draws of (4, S/8, S/8) seeded with 42 ((4, H/8, W/8) for (H, W))."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size  # data.sizes is beside this floor
    if h % downsample or w % downsample:
        raise InputError(f"image size must be divisible by {downsample}, got {img_size}")
    return make_noise(n, (channels, h // downsample, w // downsample), seed)


def load_noise(path: str | Path) -> torch.Tensor:
    """A noise bank saved with torch.save (or numpy.save): a float tensor (N, C, H, W)."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"noise file {path} does not exist; write one with scripts/save_noise.py --img_size S")
    with open(path, "rb") as f:
        is_npy = f.read(6) == b"\x93NUMPY"
    try:
        if is_npy:  # a bank saved with numpy.save
            import numpy as np

            noise = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            with warnings.catch_warnings():  # torch's notes on foreign pickles; the error below says it all
                warnings.simplefilter("ignore")
                noise = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a pickle of other objects, a truncated or foreign file
        from .records import load_failure

        how = "numpy.load(allow_pickle=False)" if is_npy else "torch.load(weights_only=True)"
        raise InputError(f"noise file {path} cannot be loaded with {how}: {load_failure(e)}; "
                         f"expected a float tensor (N, C, H, W) saved with torch.save, as scripts/save_noise.py "
                         f"writes") from None
    return check_bank(noise, f"noise file {path}", "scripts/save_noise.py")


MAX_NORMAL_DRAW = 40.0


def check_bank(noise, source: str = "noise", tool: str | None = None) -> torch.Tensor:
    """The bank as float32 when it is a float tensor (N, C, H, W) of finite values, else InputError naming `source` (and
    the `tool` that writes good ones)."""
    if not isinstance(noise, torch.Tensor) or noise.dim() != 4 or not noise.is_floating_point():
        got = (f"a {noise.dtype} tensor of shape {tuple(noise.shape)}" if isinstance(noise, torch.Tensor)
               else f"a {type(noise).__name__}")
        raise InputError(f"{source} must hold a float tensor (N, C, H, W), found {got}"
                         f"{f'; {tool} writes one' if tool else ''}")
    if noise.layout != torch.strided:
        raise InputError(f"{source} must hold a dense float tensor (N, C, H, W), found a {noise.layout} tensor"
                         f"{f'; {tool} writes one' if tool else ''}")
    noise = noise.float()  # float8 and other storage types compute in float32
    finite = torch.isfinite(noise)
    if not bool(finite.all()):
        n_nan, n_inf = int(torch.isnan(noise).sum()), int(torch.isinf(noise).sum())
        rows = int((~finite).flatten(1).any(1).sum())
        raise InputError(f"{source} holds {n_nan} NaN and {n_inf} infinite values (in {rows} of its "
                         f"{noise.shape[0]} rows); every error computed with them would be NaN: expected finite "
                         f"normal draws{f', write a new bank with {tool}' if tool else ''}")
    largest = float(noise.abs().max()) if noise.numel() else 0.0
    if largest > MAX_NORMAL_DRAW:  # a standard normal draw is never this large (P(|x| > 40) < 1e-300)
        raise InputError(f"{source} holds values as large as {largest:.3g}; expected standard normal draws (mean 0, "
                         f"std 1), which never exceed {MAX_NORMAL_DRAW:g} in size"
                         f"{f': write a new bank with {tool}' if tool else ''}")
    return noise


def check_noise(noise: torch.Tensor, latent_shape: tuple[int, ...], n_needed: int, source: str = "noise bank") -> None:
    """Raise InputError unless the bank is (>= n_needed, *latent_shape)."""
    if tuple(noise.shape[1:]) != tuple(latent_shape):
        raise InputError(f"{source} has shape {tuple(noise.shape)}, expected (N, {', '.join(map(str, latent_shape))})"
                         " to match the model's latents at this image size")
    if noise.shape[0] < n_needed:
        raise InputError(f"{source} has {noise.shape[0]} rows, the schedule needs at least {n_needed}")


def noise_bank(n_rows: int, latent_shape: tuple[int, ...], seed: int, noise_path=None) -> tuple[torch.Tensor, str]:
    """(bank, where it came from): the saved bank at noise_path, else n_rows draws from seed; checked."""
    if noise_path is not None:
        noise, source = load_noise(noise_path), str(noise_path)
    else:
        noise, source = make_noise(n_rows, latent_shape, seed), f"seed {seed}"
    check_noise(noise, latent_shape, n_rows, f"noise bank ({source})")
    return noise, source


def periodic_noise_rows(n: int, period: int, randomize_noise: bool) -> torch.Tensor:
    """Noise row of the k-th (t, trial) of a full evaluation: k with randomize_noise, else k % period.

    Without randomize_noise the reference gives every batch the first rows of its bank, so the row is
    the position within a batch of `period` (its batch size) consecutive (t, trial): numbers then depend
    on the batch size.
    """
    if period < 1:
        raise InputError(f"the noise period (--batch_size) must be >= 1, got {period}")
    k = torch.arange(n, dtype=torch.long)
    return k if randomize_noise else k % period


def periodic_noise_needed(n: int, period: int, randomize_noise: bool) -> int:
    """Rows of the noise bank that periodic_noise_rows reads."""
    return n if randomize_noise else min(n, period)


def noise_digest(noise: torch.Tensor) -> str:
    """A short digest of a noise bank's values: two runs share records only if they share their noise."""
    import hashlib

    return hashlib.sha256(noise.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()[:16]
