"""How jobs are packed when the user does not say: batch size and images per call, per device.

The scripts keep the reference's flags and their shown defaults (`--batch_size 32`), but a flag the
user did not give is None ('auto') and resolved here, so one place decides the packing for every
device and model family. Packing never changes a prediction: each job's noise, timestep and
condition are fixed by the schedule, not by the batch it lands in. The one exception is the
reference's periodic noise (DiT per-class runs and Winoground without --randomize_noise), where the
k-th (t, trial) reuses noise row k mod batch_size: there the batch size is part of the numbers, so
it stays the reference's 32 unless the user gives another.
"""
from __future__ import annotations

import torch

from .errors import InputError

REFERENCE_BATCH_SIZE = 32  # the reference's --batch_size, the value the scripts' help shows

# Measured on the CPU with the shipped tiny model, whole process (README, Performance): 16 images of
# jobs per call in batches of 128 ran faster than one image in batches of 32, the reference's packing.
# On CUDA the same packing is used until a per-GPU choice is measured (auto_batch_size is the hook).
AUTO_BATCH_SIZE = {"cpu": 128, "cuda": 128}
AUTO_IMAGE_BATCH = {"cpu": 16, "cuda": 16}
FALLBACK_BATCH_SIZE = 128
FALLBACK_IMAGE_BATCH = 16


def auto_batch_size(device: torch.device | str) -> int:
    """Denoiser evaluations per batch when the user gives none and the batch size does not fix the noise."""
    return AUTO_BATCH_SIZE.get(torch.device(device).type, FALLBACK_BATCH_SIZE)


def auto_image_batch(device: torch.device | str) -> int:
    """Images whose jobs are packed into shared batches when the user gives no --image_batch."""
    return AUTO_IMAGE_BATCH.get(torch.device(device).type, FALLBACK_IMAGE_BATCH)


def resolve_packing(
    device: torch.device | str,
    batch_size: int | None = None,
    image_batch: int | None = None,
    batch_sets_noise: bool = False,
) -> tuple[int, int]:
    """(batch_size, image_batch): the user's values where given (not None), else this device's choice.

    `batch_sets_noise`: the run reuses noise rows with period batch_size (the reference's periodic
    noise), so an unset batch size is the reference's 32, not a faster one.
    """
    for name, value in (("--batch_size", batch_size), ("--image_batch", image_batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    if batch_size is None:
        batch_size = REFERENCE_BATCH_SIZE if batch_sets_noise else auto_batch_size(device)
    if image_batch is None:
        image_batch = auto_image_batch(device)
    return batch_size, image_batch
