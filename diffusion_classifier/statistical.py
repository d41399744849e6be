"""A statistically adaptive schedule: prune candidates by paired differences of their errors.

Every candidate is scored on the same (t, ε), so for candidates a and the current leader b the
per-sample differences d = err_a - err_b are paired and their mean has standard error sd(d)/sqrt(n).
A candidate is dropped once mean(d) > z·se; timesteps come in a stratified order so that every prefix
covers [0, T) evenly; evaluation stops when one candidate remains or `max_samples` timesteps are spent.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from .adaptive import AdaptiveResult, adaptive_classify, reference_stages
from .engine import Jobs
from .errors import InputError


def stratified_timesteps(max_samples: int, T: int = 1000) -> list[int]:
    """The reference's evenly spaced grid of max_samples timesteps, in bit-reversed (van der Corput) order."""
    if not 1 <= max_samples <= T:
        raise InputError(f"max_samples must be in 1..{T}, got {max_samples}")
    grid = list(range(T // max_samples // 2, T, T // max_samples))[:max_samples]
    bits = max(1, (max_samples - 1).bit_length())
    order = sorted(range(max_samples), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))
    return [grid[i] for i in order]


def paired_prune(errors: torch.Tensor, z: float) -> torch.Tensor:
    """Keep-mask over candidates given their errors on shared samples (K, n): drop those worse than the
    leader by more than z paired standard errors."""
    k, n = errors.shape
    means = errors.mean(1)
    leader = int(means.argmin())
    if n < 2:
        return torch.ones(k, dtype=torch.bool)
    d = errors - errors[leader]  # (K, n) paired differences
    se = d.std(1, unbiased=True) / n**0.5
    keep = d.mean(1) <= z * se
    keep[leader] = True
    return keep


def statistical_classify(
    evaluate: Callable[[Jobs], torch.Tensor],
    n_images: int,
    n_candidates: int,
    max_samples: int = 500,
    n_trials: int = 1,
    z: float = 3.0,
    min_samples: int = 10,
    step: int | None = None,
    T: int = 1000,
) -> list[AdaptiveResult]:
    """Classify n_images at once; errors per (t, trial) of the k-th timestep use noise rows n_trials*k+trial."""
    if z <= 0:
        raise InputError(f"z must be positive, got {z}")
    if not 1 <= min_samples <= max_samples:
        raise InputError(f"min_samples must be in 1..max_samples ({max_samples}), got {min_samples}")
    timesteps = stratified_timesteps(max_samples, T)
    step = step or min_samples
    alive = [list(range(n_candidates)) for _ in range(n_images)]
    errs = [[[] for _ in range(n_candidates)] for _ in range(n_images)]  # [image][cand] -> list of (n_trials,) tensors
    ts_done = [[[] for _ in range(n_candidates)] for _ in range(n_images)]
    k0 = 0
    while k0 < max_samples:
        k1 = min(max_samples, k0 + (min_samples if k0 == 0 else step))
        active = [i for i in range(n_images) if len(alive[i]) > 1 or k0 == 0]
        if not active:
            break
        image, cond, ts, noise = [], [], [], []
        for i in active:
            for c in alive[i]:
                for k in range(k0, k1):
                    image += [i] * n_trials
                    cond += [c] * n_trials
                    ts += [timesteps[k]] * n_trials
                    noise += range(n_trials * k, n_trials * (k + 1))
        out = evaluate(Jobs.build(image, cond, ts, noise)).view(-1, k1 - k0, n_trials)  # (rows, k, trials)
        row = 0
        for i in active:
            for c in alive[i]:
                errs[i][c].append(out[row])
                ts_done[i][c] += timesteps[k0:k1]
                row += 1
            if len(alive[i]) > 1:
                e = torch.stack([torch.cat(errs[i][c]).flatten() for c in alive[i]])  # (K_alive, n)
                keep = paired_prune(e, z)
                alive[i] = [c for c, kp in zip(alive[i], keep.tolist()) if kp]
        k0 = k1
    results = []
    for i in range(n_images):
        data = {}
        for c in range(n_candidates):
            if errs[i][c]:
                e = torch.cat(errs[i][c])  # (n_t, n_trials)
                t = torch.tensor(ts_done[i][c]).repeat_interleave(n_trials)
                data[c] = {"t": t, "pred_errors": e.flatten()}
        means = {c: float(data[c]["pred_errors"].mean()) for c in alive[i]}
        results.append(AdaptiveResult(pred=min(means, key=means.get), errors=data))
    return results


def make_schedule(schedule: str, to_keep, n_samples, n_trials: int = 1, z: float = 3.0, min_samples: int = 10,
                  T: int = 1000) -> tuple[Callable, int]:
    """(classify(evaluate, n_images, n_candidates), noise rows it needs) for 'reference' or 'statistical'."""
    if schedule == "statistical":
        return (functools.partial(statistical_classify, max_samples=max(n_samples), n_trials=n_trials, z=z,
                                  min_samples=min_samples, T=T), n_trials * max(n_samples))
    if schedule == "reference":
        rows = n_trials * sum(len(s.timesteps) for s in reference_stages(to_keep, n_samples, T))
        return functools.partial(adaptive_classify, to_keep=to_keep, n_samples=n_samples, n_trials=n_trials, T=T), rows
    raise InputError(f"schedule must be 'reference' or 'statistical', got {schedule!r}")
