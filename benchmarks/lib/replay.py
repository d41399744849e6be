"""Schedules replayed on full-evaluation records: every class at the 200 stratified timesteps, noise row k at the k-th.

The statistical schedules (fixed z, anytime-valid) ask only for (timestep, noise row) pairs of the full evaluation,
so their replay (statistical.Replay) is exactly a real run; the reference-style staged schedules use the same grid
but their own noise rows in a real run, so their replay is the same grid with another draw of noise.
"""
from __future__ import annotations

import numpy as np
import torch

from diffusion_classifier.calibration import nll
from diffusion_classifier.schedules.staged import adaptive_classify
from diffusion_classifier.schedules.statistical import Replay, rule_settings, statistical_classify
from diffusion_classifier.timestep_weights import fit_temperature, fit_weights, predictions, probabilities, split_indices
from diffusion_classifier.weighting import TimestepWeights

N_TIMESTEPS = 200  # timesteps of the full evaluation
DELTA = 0.05  # the anytime rule of evaluate() and cross_validated(): --delta 0.05 at its default rule


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


# ---------------------------------------------------------------- timestep weightings of a full evaluation


def anytime(ev, n, k, w):
    """The default rule of --delta on the full evaluation's grid (at most its 200 timesteps per candidate)."""
    return statistical_classify(ev, n, k, N_TIMESTEPS, delta=DELTA, weights=w, **rule_settings(DELTA))


def evaluate(fe, w: torch.Tensor | None, idx) -> tuple[dict, torch.Tensor]:
    """(full-evaluation top-1, NLL at the fitted temperature and the anytime rule's top-1 and cost; which images the
    full evaluation gets right) of weights w on images idx of fe."""
    tw = None if w is None else TimestepWeights(w)
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    right = (predictions(fe, tw, idx) == fe.labels[idx])
    tau = fit_temperature(fe, tw, idx)
    row = {"full_top1": 100.0 * float(right.double().mean()), "full_nll": nll(probabilities(fe, tw, tau, idx),
                                                                              fe.labels[idx]), "temperature": tau}
    any_ = replay(fe, anytime, idx, w)
    row.update(anytime_top1=any_["accuracy"], anytime_evals_per_image=any_["evals_per_image"])
    return row, right


def cross_validated(fe, kind: str, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """`kind` weights fitted on one half of the images and scored on the other, both ways: (the row, pooled over the
    two halves, with both fitted weights; which images the full evaluation gets right)."""
    a, b = split_indices(len(fe.labels), 0.5, seed)
    right = torch.zeros(len(fe.labels), dtype=torch.bool)
    row = {"full_top1": 0.0, "anytime_top1": 0.0, "anytime_evals_per_image": 0.0, "weights_every_100": []}
    for fit_on, score_on in ((a, b), (b, a)):
        w = fit_weights(fe, fit_on, kind).weights
        half, right[score_on] = evaluate(fe, w, score_on)
        for key in ("full_top1", "anytime_top1", "anytime_evals_per_image"):
            row[key] += half[key] * len(score_on) / len(fe.labels)
        row["weights_every_100"].append([round(float(v), 4) for v in w[::100]])
    return row, right
