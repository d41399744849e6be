"""Schedules replayed on full-evaluation records: every class at the 200 stratified timesteps, noise row k at the k-th.

The statistical schedules (fixed z, anytime-valid) ask only for (timestep, noise row) pairs of the full evaluation,
so their replay (statistical.Replay) is exactly a real run; the reference-style staged schedules use the same grid
but their own noise rows in a real run, so their replay is the same grid with another draw of noise.
"""
from __future__ import annotations

import torch

from diffusion_classifier.schedules.staged import adaptive_classify
from diffusion_classifier.schedules.statistical import Replay, statistical_classify

N_TIMESTEPS = 200  # timesteps of the full evaluation


def schedules(deltas, zs, min_samples):
    """(name, kind, classify(evaluate, n, k, weights)) of every schedule compared."""
    out = [("full: all classes x 200 timesteps", "full",
            lambda ev, n, k, w: statistical_classify(ev, n, k, N_TIMESTEPS, min_samples=N_TIMESTEPS, weights=w))]
    for keep, samples in (([5, 1], [20, 200]), ([5, 1], [10, 50]), ([3, 1], [10, 100])):
        out.append((f"reference-style keep {' '.join(map(str, keep))} / samples {' '.join(map(str, samples))}",
                    "reference", lambda ev, n, k, w, a=keep, b=samples: adaptive_classify(ev, n, k, a, b, weights=w)))
    for z in zs:
        out.append((f"fixed z={z:g} (min {min_samples})", "fixed-z",
                    lambda ev, n, k, w, z=z: statistical_classify(ev, n, k, N_TIMESTEPS, z=z, min_samples=min_samples,
                                                                  weights=w)))
    for variance in ("iid", "stratified"):
        for d in deltas:
            out.append((f"anytime delta={d:g} (min {min_samples}, {variance})", f"anytime-{variance}",
                        lambda ev, n, k, w, d=d, v=variance: statistical_classify(
                            ev, n, k, N_TIMESTEPS, delta=d, min_samples=min_samples, weights=w, variance=v)))
    return out


def replay(fe, classify, idx, weights=None, exact: bool = True) -> dict:
    """Accuracy and evaluations per image of one schedule replayed on images idx of the full records.

    exact: the schedule must ask for the full evaluation's own (timestep, noise row) pairs (statistical
    schedules); reference-style schedules are answered by timestep.
    """
    idx = torch.as_tensor(idx, dtype=torch.long)
    ev = Replay.stratified(fe.errors[idx].float(), fe.t, check_noise=exact)
    res = classify(ev, len(idx), fe.errors.shape[1], weights)
    preds = torch.tensor([fe.candidate_class[r.pred] for r in res])
    return {"accuracy": 100.0 * float((preds == fe.labels[idx]).double().mean()),
            "evals_per_image": ev.evaluations / len(idx), "n_images": len(idx)}
