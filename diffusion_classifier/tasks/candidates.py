"""A text-conditional model set up to score candidates (captions, regions) of one item at a time, on shared (t, ε).

What run_refcoco.py and run_compositional.py share: the model, its image size and latent shape, the packed
Scorer over one noise bank, the schedule for an item with n candidates (the staged schedule keeps at most n),
and the settings beyond the folder name that change the numbers (records.check_manifest's `numerics`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..engine import Scorer
from ..families import load_model, resolve_model
from ..noise import noise_bank, noise_digest
from ..packing import resolve_packing
from ..schedules.staged import validate_schedule
from ..schedules.statistical import make_schedule


@dataclass
class CandidateScoring:
    model: object
    img_size: int
    source: str
    scorer: Scorer
    schedule_for: Callable[[int], Callable]  # n_candidates -> classify(evaluate, n_images, n_candidates)
    noise_source: str
    numerics: dict


def candidate_scoring(version: str | None, model_path: str | None, device: torch.device, dtype: torch.dtype,
                      attention: str, img_size: int | None, batch_size: int | None, schedule: str,
                      to_keep: Sequence[int], n_samples: Sequence[int], n_trials: int, seed: int, noise_path,
                      statistical: dict) -> CandidateScoring:
    """Load the model and build its Scorer and per-item schedules (schedules.statistical.make_schedule)."""
    source = resolve_model(version, model_path)
    model = load_model(source, device, dtype, attention)
    img_size = img_size or model.native_size
    latent_shape = model.latent_shape(img_size)
    batch_size, _ = resolve_packing(device, math.prod(latent_shape), batch_size)
    validate_schedule(to_keep, n_samples, T=model.T)
    _, n_rows = make_schedule(schedule, to_keep, n_samples, n_trials, T=model.T, **statistical)

    @functools.lru_cache(maxsize=None)
    def schedule_for(n_candidates: int) -> Callable:
        keep = [min(k, n_candidates) for k in to_keep]  # an item with fewer candidates keeps them all
        return make_schedule(schedule, keep, n_samples, n_trials, T=model.T, **statistical)[0]

    noise, noise_source = noise_bank(n_rows, latent_shape, seed, noise_path)
    scorer = Scorer(model.denoiser, model.make_objective(latent_shape), noise, device, dtype, batch_size)
    numerics = {"dtype": str(dtype), "attention": attention, "noise_digest": noise_digest(noise)}
    return CandidateScoring(model, img_size, source, scorer, schedule_for, noise_source, numerics)
