"""Image-text matching with a diffusion model: errors of every (text, image) pair on shared (t, ε).

Two comparisons, both on the same (t, ε) for every pair (Li et al. 2023, Sec. 3; Krojer et al. 2023):
- several texts for one image (text retrieval): a caption's score is -E[err(text, image)]; all captions
  see the same (t, ε) on the same image, so their differences are paired and low in variance;
- several images for one text (image retrieval): errors of *different images* are not comparable as they
  stand (an image that is easy to denoise wins whatever the text says), so each image's error under the
  empty prompt on the same (t, ε) is subtracted first: a null-normalised score, a log-likelihood ratio.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.entries import short
from ..engine import Jobs, Scorer
from ..errors import InputError
from ..noise import periodic_noise_rows


def pair_jobs(timesteps: list[int], n_trials: int, randomize_noise: bool, noise_period: int,
              n_conds: int = 3, n_images: int = 2) -> Jobs:
    """Jobs for every (condition, image) pair × every (t, trial), condition-major; output reshapes to
    (n_conds, n_images, n_t, n_trials). The k-th (t, trial) is t = timesteps[k // n_trials]."""
    if n_trials < 1:
        raise InputError(f"n_trials must be >= 1, got {n_trials}")
    n = len(timesteps) * n_trials
    t = torch.as_tensor(timesteps, dtype=torch.long).repeat_interleave(n_trials)  # (n,)
    noise = periodic_noise_rows(n, noise_period, randomize_noise)  # (n,)
    cond, image = torch.meshgrid(torch.arange(n_conds), torch.arange(n_images), indexing="ij")
    pairs = n_conds * n_images
    return Jobs.build(image=image.reshape(-1).repeat_interleave(n), cond=cond.reshape(-1).repeat_interleave(n),
                      t=t.repeat(pairs), noise=noise.repeat(pairs))


def pair_errors(scorer: Scorer, latents: torch.Tensor, conds: torch.Tensor, timesteps: list[int], n_trials: int = 1,
                randomize_noise: bool = False, noise_period: int = 32, loss: str = "l2") -> torch.Tensor:
    """Errors of every (condition, image) pair on the same (t, ε): (n_conds, n_images, n_t, n_trials) float32.

    latents: (n_images, C, H, W); conds: (n_conds, ...), the empty prompt among them when normalising.
    """
    jobs = pair_jobs(timesteps, n_trials, randomize_noise, noise_period, len(conds), len(latents))
    return scorer.evaluate(latents, conds, jobs, loss).float().reshape(len(conds), len(latents), len(timesteps),
                                                                       n_trials)


def mean_scores(errors: torch.Tensor) -> torch.Tensor:
    """Scores s = -mean error over (t, trial), float64: (n_conds, n_images, n_t, n_trials) -> (n_conds, n_images)."""
    return -errors.double().mean(dim=(2, 3))


def as_array(scores) -> np.ndarray:
    """Scores (a tensor on any device or dtype, or array-like) as a float64 numpy array."""
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().double().numpy()
    return np.asarray(scores, dtype=np.float64)


def null_normalized(scores, uncond) -> np.ndarray:
    """Scores with each image's null score removed: s_norm[..., c, i] = s[..., c, i] - u[..., i].

    With diffusion scores s = -err(c, i) and u[i] = -err("", i) on the same (t, ε), this removes how easy
    an image is to denoise regardless of the text. Comparisons within one image (text retrieval) do not
    change: a per-image shift cancels there. scores: (..., n_texts, n_images); uncond: (..., n_images).
    """
    s, u = as_array(scores), as_array(uncond)
    if s.ndim < 2:
        raise InputError(f"scores must have shape (..., n_texts, n_images), got {s.shape}")
    if u.shape != s.shape[:-2] + s.shape[-1:]:
        raise InputError(f"null scores must have shape {s.shape[:-2] + s.shape[-1:]} (one per image), got {u.shape}")
    return s - u[..., None, :]  # broadcast over texts


def text_choice(scores) -> np.ndarray:
    """Per image, the index of the best-matching text: (..., n_texts, n_images) -> (..., n_images)."""
    return as_array(scores).argmax(-2)


def image_choice(scores) -> np.ndarray:
    """Per text, the index of the best-matching image: (..., n_texts, n_images) -> (..., n_texts)."""
    return as_array(scores).argmax(-1)


def null_normalized_errors(scorer: Scorer, latents: torch.Tensor, conds, jobs: Jobs, null: int,
                           loss: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """err(c, i) - err("", i) per job, each pair on the job's own (t, ε), from one batched evaluation.

    jobs name (image, condition, t, noise); `null` is the index of the empty prompt in conds. The score of a
    job is a log-likelihood-ratio estimate, comparable across images (see null_normalized). Returns the
    normalised errors (J,) and the raw errors (J, 2) [condition, empty prompt], float32.
    """
    both = Jobs.cat([jobs, Jobs(jobs.image, torch.full_like(jobs.cond, null), jobs.t, jobs.noise)])
    raw = scorer.evaluate(latents, conds, both, loss).float().reshape(2, len(jobs)).T  # (J, 2)
    return raw[:, 0] - raw[:, 1], raw.contiguous()


def _plain(value):
    """A tuple as a list: a tuple and a list of the same values are the same input."""
    return list(value) if isinstance(value, tuple) else value


def check_same_inputs(path: Path, noun: str, key, record: dict, now: dict) -> None:
    """InputError when `record` (at `path`, of the `noun` `key`) holds one of the inputs `now` ({name: what the data
    gives now}) with another value: the data changed since it was scored, and it would be counted for inputs it was
    not computed on. An input the record lacks (a record written before it was stored) passes; a task's `check`."""
    scored = {name: record[name] for name in now if name in record}
    if all(_plain(value) == _plain(now[name]) for name, value in scored.items()):
        return

    def inputs(values: dict) -> str:
        return " and ".join(f"{name} {short(_plain(value), 200)}" for name, value in values.items())

    raise InputError(f"{path} was scored for {noun} {key!r} with {inputs(scored)}, but the data now gives "
                     f"{inputs({name: now[name] for name in scored})}: the data changed since this run began; delete "
                     f"that record to score the {noun} again, or use another --log_dir or --extra")
