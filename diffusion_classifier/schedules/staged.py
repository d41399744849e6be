"""Adaptive evaluation: the paper's staged pruning (Algorithm 2) over a shared (t, ε) grid."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..engine import Jobs
from ..errors import InputError


@dataclass(frozen=True)
class Stage:
    """One pruning stage: the new timesteps it evaluates and how many candidates survive it."""

    timesteps: tuple[int, ...]  # timesteps not evaluated by earlier stages
    first_t_idx: int  # t_idx of timesteps[0]; noise rows are n_trials*t_idx .. n_trials*t_idx+n_trials-1
    keep: int


def validate_schedule(to_keep, n_samples, n_candidates: int | None = None, T: int = 1000) -> None:
    """Raise ValueError unless (to_keep, n_samples) is a schedule the adaptive evaluation can run."""
    to_keep, n_samples = list(to_keep), list(n_samples)
    if len(to_keep) != len(n_samples):
        raise InputError(f"--to_keep and --n_samples must have the same length, got {len(to_keep)} and {len(n_samples)}")
    if not to_keep:
        raise InputError("--to_keep and --n_samples need at least one stage")
    if to_keep[-1] != 1:
        raise InputError(f"the last --to_keep must be 1 (one prediction), got {to_keep[-1]}")
    if any(k < 1 for k in to_keep) or any(n < 1 for n in n_samples):
        raise InputError(f"--to_keep and --n_samples must be positive, got {to_keep} and {n_samples}")
    if any(b > a for a, b in zip(to_keep, to_keep[1:])):
        raise InputError(f"--to_keep must not increase from stage to stage, got {to_keep}")
    if any(b < a for a, b in zip(n_samples, n_samples[1:])):
        raise InputError(f"--n_samples must not decrease from stage to stage, got {n_samples}")
    if max(n_samples) > T:
        raise InputError(f"--n_samples must be at most the {T} training timesteps, got {max(n_samples)}")
    if n_candidates is not None and to_keep[0] > n_candidates:
        raise InputError(f"--to_keep {to_keep[0]} is larger than the {n_candidates} candidates (prompts or classes)")


def interval_timesteps(t_interval: int, T: int = 1000) -> list[int]:
    """The reference's full-evaluation timesteps (DiT per-class runs, Winoground): range(t_interval // 2, T, t_interval)."""
    if isinstance(t_interval, bool) or not isinstance(t_interval, int) or not 1 <= t_interval <= T:
        raise InputError(f"--t_interval must be an int in 1..{T}, got {t_interval!r}")
    return list(range(t_interval // 2, T, t_interval))


def reference_stages(to_keep, n_samples, T: int = 1000) -> list[Stage]:
    """The reference's stages: an evenly spaced grid of max(n_samples) timesteps, subsampled per stage."""
    validate_schedule(to_keep, n_samples, T=T)
    m = max(n_samples)
    grid = list(range(T // m // 2, T, T // m))[:m]
    seen: set[int] = set()
    stages = []
    for n, keep in zip(n_samples, to_keep):
        step = len(grid) // n
        new = [t for t in grid[step // 2 :: step][:n] if t not in seen]
        stages.append(Stage(tuple(new), len(seen), keep))
        seen.update(new)
    return stages


def stage_jobs(stage: Stage, candidates: list[int], n_trials: int, image: int = 0) -> Jobs:
    """Jobs of one stage for one image, in the reference's order: candidate, then timestep, then trial."""
    ts, noise, cond = [], [], []
    for c in candidates:
        for t_idx, t in enumerate(stage.timesteps, start=stage.first_t_idx):
            ts += [t] * n_trials
            noise += range(n_trials * t_idx, n_trials * (t_idx + 1))
            cond += [c] * n_trials
    return Jobs.build([image] * len(ts), cond, ts, noise)


@dataclass
class AdaptiveResult:
    """Outcome for one image: the winning candidate and every error evaluated, per candidate."""

    pred: int
    errors: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # cand -> {'t', 'pred_errors'}
    survivors: list[int] | None = None  # candidates never pruned (statistical schedules)

    def mean_errors(self, n_candidates: int) -> torch.Tensor:
        """Each candidate's mean error over everything it was evaluated on: (K,)."""
        return torch.stack([self.errors[c]["pred_errors"].float().mean() for c in range(n_candidates)])

    def scores(self, n_candidates: int, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Each candidate's paired score (paired_scores): (K,) float64."""
        return paired_scores(self.errors, n_candidates, weights)


def paired_scores(errors: dict, n_candidates: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(K,) float64: every candidate's mean error estimated over the samples of the most-evaluated candidate.

    A schedule stops evaluating a candidate once it is out of the running, so its own mean is over fewer, and
    other, timesteps than the leader's, and the error depends strongly on t: a candidate dropped after a few
    low-noise samples can show a lower mean than the winner. Every candidate is evaluated on the same (t, noise)
    samples as the others while it runs, so the leader L (most samples, then lowest mean) gives each candidate c
    the score mean(e_L) + mean over the samples both have of (e_c - e_L): an unbiased estimate of what c's mean
    over L's samples would have been. With every candidate at every sample (a full evaluation) this is each
    candidate's own mean. Samples are matched by timestep and occurrence (the trials of a timestep share its
    noise rows in order). `weights` (T,): scores of w(t)·e, as the schedules rank. A candidate without samples
    scores inf; one sharing no sample with L keeps its own mean.
    """
    def values(c: int) -> torch.Tensor:
        e = errors[c]["pred_errors"].double()
        e = e.reshape(len(e), -1).mean(1)  # one value per sample (views of a sample averaged)
        return e if weights is None else e * weights[errors[c]["t"].long()].to(e)

    def keys(c: int) -> list[tuple[int, int]]:
        seen: dict[int, int] = {}
        out = []
        for t in errors[c]["t"].tolist():
            out.append((t, seen.get(t, 0)))
            seen[t] = seen.get(t, 0) + 1
        return out

    present = [c for c in range(n_candidates) if c in errors and len(errors[c]["t"])]
    out = torch.full((n_candidates,), math.inf, dtype=torch.float64)
    if not present:
        return out
    e = {c: values(c) for c in present}
    lead = min(present, key=lambda c: (-len(e[c]), float(e[c].mean()), c))
    at = {k: j for j, k in enumerate(keys(lead))}
    base = e[lead].mean()
    for c in present:
        pairs = [(j, at[k]) for j, k in enumerate(keys(c)) if k in at]
        if not pairs:
            out[c] = e[c].mean()
            continue
        mine, theirs = zip(*pairs)
        out[c] = base + (e[c][list(mine)] - e[lead][list(theirs)]).mean()
    return out


def adaptive_classify(
    evaluate: Callable[[Jobs], torch.Tensor],
    n_images: int,
    n_candidates: int,
    to_keep,
    n_samples,
    n_trials: int = 1,
    T: int = 1000,
    weights: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> list[AdaptiveResult]:
    """Staged pruning for several images at once; each image is pruned exactly as if it ran alone.

    With `weights` (T,) positive, candidates are ranked by their weighted mean error mean(w(t)·e); with `shift`
    (n_candidates,), by that mean plus the candidate's shift (class offsets, class_offsets.ClassOffsets.shift).

    `evaluate(jobs)` returns one error per job (J,). All images' jobs of a stage go to one call, so
    the engine can pack them into full batches.
    """
    validate_schedule(to_keep, n_samples, n_candidates, T)
    stages = reference_stages(to_keep, n_samples, T)
    remaining = [list(range(n_candidates)) for _ in range(n_images)]
    results = [AdaptiveResult(pred=-1) for _ in range(n_images)]
    for stage in stages:
        parts = [stage_jobs(stage, remaining[i], n_trials, image=i) for i in range(n_images)]
        jobs = Jobs.cat(parts)
        errors = evaluate(jobs) if len(jobs) else torch.empty(0)
        offset = 0
        for i, part in enumerate(parts):
            err_i, t_i, cond_i = errors[offset : offset + len(part)], part.t, part.cond
            offset += len(part)
            data = results[i].errors
            for c in remaining[i]:
                mask = cond_i == c
                if c in data:
                    data[c] = {"t": torch.cat([data[c]["t"], t_i[mask]]),
                               "pred_errors": torch.cat([data[c]["pred_errors"], err_i[mask]])}
                else:
                    data[c] = {"t": t_i[mask], "pred_errors": err_i[mask]}
            if weights is None:
                means = torch.stack([data[c]["pred_errors"].mean() for c in remaining[i]])
            else:
                means = torch.stack([(data[c]["pred_errors"] * weights[data[c]["t"]].to(torch.float32)).mean()
                                     for c in remaining[i]])
            if shift is not None:
                means = means + shift[remaining[i]].to(means.dtype)
            best = torch.argsort(means, stable=True)[: stage.keep].tolist()  # ties: lower index first
            remaining[i] = [remaining[i][j] for j in best]
    for i in range(n_images):
        assert len(remaining[i]) == 1
        results[i].pred = remaining[i][0]
    return results


def n_evaluations(n_candidates: int, to_keep, n_samples, n_trials: int = 1, T: int = 1000) -> int:
    """Denoiser evaluations per image of the reference schedule (e.g. 2750 for CIFAR-10's)."""
    total, alive = 0, n_candidates
    for stage in reference_stages(to_keep, n_samples, T):
        total += alive * len(stage.timesteps) * n_trials
        alive = stage.keep
    return total
