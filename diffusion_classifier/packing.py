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

# The automatic batch holds as many latent elements as the reference's batch of 32 Stable Diffusion
# 512 px latents (4x64x64), so it needs no more memory than the reference did, and never fewer than
# the reference's 32 jobs. Measured on the CPU with the shipped tiny model (3x8x8, 300 evaluations
# per image, 32 test digits, one thread, CPU seconds of eval_prob_adaptive's main, two interleaved
# repeats): batch 32 / 1 image per call 14.2, 12.2 s; 128 / 16 10.6, 8.2 s; 256 / 16 9.2, 7.8 s;
# 256 / 32 9.2, 8.1 s; 512 / 32 9.7, 8.8 s; hence the cap at 256 and 16 images.
BATCH_ELEMENTS = REFERENCE_BATCH_SIZE * 4 * 64 * 64
MAX_AUTO_BATCH = 256
MAX_AUTO_IMAGE_BATCH = 16


def auto_batch_size(device: torch.device | str, latent_numel: int) -> int:
    """Denoiser evaluations per batch when the user gives none and the batch size does not set the noise.

    The same rule on every device for now; a GPU-specific choice (free memory, measured throughput)
    belongs here, keyed on torch.device(device).type.
    """
    if latent_numel < 1:
        raise InputError(f"latent size must be >= 1 element, got {latent_numel}")
    return max(REFERENCE_BATCH_SIZE, min(MAX_AUTO_BATCH, BATCH_ELEMENTS // latent_numel))


def auto_image_batch(device: torch.device | str, batch_size: int) -> int:
    """Images whose jobs share batches when the user gives no --image_batch: enough to fill them.

    One image per 8 batch slots (a stage of the reference schedule gives each image at least 8
    jobs), at most 16 so that records still reach the disk every few images.
    """
    return max(1, min(MAX_AUTO_IMAGE_BATCH, batch_size // 8))


def resolve_packing(
    device: torch.device | str,
    latent_numel: int,
    batch_size: int | None = None,
    image_batch: int | None = None,
    batch_sets_noise: bool = False,
) -> tuple[int, int]:
    """(batch_size, image_batch): the user's values where given (not None), else this device's choice.

    `latent_numel`: elements of one latent (C*H*W), which bounds the automatic batch's memory.
    `batch_sets_noise`: the run reuses noise rows with period batch_size (the reference's periodic
    noise), so an unset batch size is the reference's 32, not a faster one.
    """
    for name, value in (("--batch_size", batch_size), ("--image_batch", image_batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    if batch_size is None:
        batch_size = REFERENCE_BATCH_SIZE if batch_sets_noise else auto_batch_size(device, latent_numel)
    if image_batch is None:
        image_batch = auto_image_batch(device, batch_size)
    return batch_size, image_batch
