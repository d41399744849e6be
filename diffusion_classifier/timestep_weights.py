"""Timestep weights learned from full-evaluation records.

A full evaluation scores every candidate k of image i at the same timesteps t_g (and noise): errors
e[i, k, g]. Uniform scoring predicts argmin_k mean_g e[i, k, g]. Weighted scoring uses
mean_g w(t_g) e[i, k, g] with positive weights w, and probabilities are
softmax_k(-mean_g w(t_g) e[i, k, g] / τ).

Two positive families for w, both fit by cross-entropy of softmax_k(-s · mean_g w(t_g) e[i, k, g])
against the labels (s > 0 a free scale, so that only the shape of w is learned; an L2 penalty on the
log-weights keeps them near uniform when the data say little):
- 'bins': one log-weight per timestep bin (n_bins equal bins of [0, T)),
- 'poly': log w(t) a polynomial of degree `degree` in u = 2t/T - 1 (Legendre basis).
Weights are normalised to mean 1 over the fitting grid, so uniform weights are all ones.

The weights files (TimestepWeights, load_weights), the weights a model folder ships and the weights a run used are in
weighting.

The temperature fit (temperature_for), NLL and calibration error come from calibration, which also holds the paired
scores of any run's records (load_record_scores).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .calibration import (candidate_classes_of, class_logits, expected_calibration_error, nll, readable_records,
                          temperature_for)
from .errors import InputError
from .weighting import TimestepWeights, uniform_weights

KINDS = ("bins", "poly")


# ---------------------------------------------------------------- records -> dense errors


@dataclass
class FullErrors:
    """Dense errors of a full evaluation: every candidate at the same samples (t, noise)."""

    errors: torch.Tensor  # (N, K, S) float64
    t: torch.Tensor  # (S,) timestep of each sample (sorted; repeated for several trials)
    labels: torch.Tensor  # (N,) dataset labels
    preds: torch.Tensor  # (N,) the records' own predictions (dataset labels)
    indices: list[int]  # dataset index of each image
    candidate_class: list[int]  # dataset label of each candidate

    def class_logits(self, cand_logits: torch.Tensor) -> torch.Tensor:
        return class_logits(cand_logits, self.candidate_class, self.labels)


def load_full_errors(folder: str | Path) -> FullErrors:
    """Every record of a run folder as dense errors; raises InputError unless it is a full evaluation."""
    errs, labels, preds, indices, t_ref = [], [], [], [], None
    for path, rec in readable_records(folder):
        data = rec["errors"]
        cands = sorted(data)
        if cands != list(range(len(cands))):
            raise InputError(f"{path}: candidates {cands[:5]}... are not 0..K-1")
        rows = []
        for c in cands:
            t = data[c]["t"].long()
            order = torch.argsort(t, stable=True)
            if t_ref is None:
                t_ref = t[order]
            if len(t) != len(t_ref) or not torch.equal(t[order], t_ref):
                raise InputError(f"{path}: candidate {c} was evaluated at {len(t)} samples, others at {len(t_ref)}; "
                                 "timestep weights need a full evaluation (every candidate at every timestep), e.g. "
                                 "--to_keep 1 --n_samples N")
            rows.append(data[c]["pred_errors"].double()[order])
        errs.append(torch.stack(rows))
        labels.append(int(rec["label"]))
        preds.append(int(rec["pred"]))
        indices.append(int(path.stem))
    if not errs:
        raise InputError(f"{folder}: no readable records")
    k = errs[0].shape[0]
    if any(e.shape[0] != k for e in errs):
        raise InputError(f"{folder}: records have different numbers of candidates")
    return FullErrors(torch.stack(errs), t_ref, torch.tensor(labels), torch.tensor(preds), indices,
                      candidate_classes_of(folder, k))


# ---------------------------------------------------------------- weights


def _basis(kind: str, t: torch.Tensor, T: int, n_bins: int, degree: int) -> torch.Tensor:
    """(S, P) design of log w(t) = basis @ θ."""
    if kind == "bins":
        b = torch.clamp((t.double() * n_bins / T).long(), 0, n_bins - 1)
        return torch.nn.functional.one_hot(b, n_bins).double()
    if kind == "poly":
        u = 2.0 * t.double() / T - 1.0
        cols = [u.new_ones(len(u)), u]
        for n in range(1, degree):  # Legendre recursion
            cols.append(((2 * n + 1) * u * cols[-1] - n * cols[-2]) / (n + 1))
        return torch.stack(cols[1 : degree + 1], 1)  # no constant: the scale is separate
    raise InputError(f"weight kind must be one of {KINDS}, got {kind!r}")


def scores(errors: torch.Tensor, t: torch.Tensor, weights: TimestepWeights | None = None) -> torch.Tensor:
    """(N, K) weighted mean errors, mean_s w(t_s) e[:, :, s] (plain means without weights)."""
    if weights is None:
        return errors.mean(-1)
    return (errors * weights.at(t).to(errors.dtype)).mean(-1)


def fit_weights(fe: FullErrors, idx, kind: str, T: int = 1000, n_bins: int = 10, degree: int = 3,
                l2: float = 1e-2, max_iter: int = 200) -> TimestepWeights:
    """Fit `kind` weights on images idx of fe by cross-entropy (see module docstring)."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    e = fe.errors[idx]
    e = e - e.mean(1, keepdim=True)  # per-sample centring across candidates: logits unchanged, better conditioned
    y = fe.labels[idx]
    basis = _basis(kind, fe.t, T, n_bins, degree)
    theta = torch.zeros(basis.shape[1], dtype=torch.float64, requires_grad=True)
    spread = float(scores(e, fe.t).std(1).mean().clamp_min(1e-12))
    log_s = torch.tensor(math.log(1.0 / spread), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta, log_s], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w = torch.exp(basis @ theta)
        w = w / w.mean()
        logits = -log_s.exp() * (e * w).mean(-1)
        loss = torch.nn.functional.cross_entropy(fe.class_logits(logits), y) + l2 * (theta**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        grid_w = torch.exp(basis @ theta)
        norm = grid_w.mean()
        full = torch.exp(_basis(kind, torch.arange(T), T, n_bins, degree) @ theta) / norm
    return TimestepWeights(full.detach(), kind, 1.0,
                           {"theta": theta.detach().tolist(), "n_bins": n_bins if kind == "bins" else None,
                            "degree": degree if kind == "poly" else None, "l2": l2})


# ---------------------------------------------------------------- probabilities and temperature


def probabilities(fe: FullErrors, weights: TimestepWeights | None = None, temperature: float = 1.0,
                  idx=None) -> torch.Tensor:
    """(N, C) class probabilities softmax(-weighted mean error / temperature)."""
    e = fe.errors if idx is None else fe.errors[torch.as_tensor(idx, dtype=torch.long)]
    logits = -scores(e, fe.t, weights) / temperature
    return torch.softmax(fe.class_logits(logits), 1)


def predictions(fe: FullErrors, weights: TimestepWeights | None = None, idx=None) -> torch.Tensor:
    """(N,) dataset labels predicted: the candidate with the lowest weighted mean error."""
    e = fe.errors if idx is None else fe.errors[torch.as_tensor(idx, dtype=torch.long)]
    best = scores(e, fe.t, weights).argmin(1)
    return torch.as_tensor(fe.candidate_class)[best]


def fit_temperature(fe: FullErrors, weights: TimestepWeights | None, idx) -> float:
    """τ minimising the negative log-likelihood of softmax(-score / τ) on images idx."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    return temperature_for(scores(fe.errors[idx], fe.t, weights), fe.labels[idx], fe.candidate_class)


def split_indices(n: int, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit part, held-out part) of n images: a seeded permutation, the last round(holdout n) held out."""
    if not 0 < holdout < 1:
        raise InputError(f"--holdout must be in (0, 1), got {holdout}")
    perm = np.random.default_rng(seed).permutation(n)
    n_out = max(1, min(n - 1, int(round(holdout * n))))
    return np.sort(perm[: n - n_out]), np.sort(perm[n - n_out :])


def fit_and_report(fe: FullErrors, T: int = 1000, holdout: float = 0.5, seed: int = 0, n_bins: int = 10,
                   degree: int = 3, l2: float = 1e-2, kind: str = "auto") -> tuple[TimestepWeights, dict]:
    """Fit bins and poly weights on the fit part; held-out accuracy, NLL and ECE before/after temperature.

    Returns the weights to use (kind 'auto': the best held-out accuracy among uniform, poly, bins; ties
    go to the simpler one) with their temperature, and the report.
    """
    if len(fe.labels) < 2:
        raise InputError("fitting timestep weights needs at least 2 labelled images")
    fit_idx, out_idx = split_indices(len(fe.labels), holdout, seed)
    candidates = {"uniform": uniform_weights(T)}
    for k in ("poly", "bins"):
        candidates[k] = fit_weights(fe, fit_idx, k, T, n_bins, degree, l2)
    y_out = fe.labels[out_idx]
    report = {"n_fit": len(fit_idx), "n_heldout": len(out_idx), "T": T, "kinds": {}}
    for name, w in candidates.items():
        acc = 100.0 * float((predictions(fe, w, out_idx) == y_out).double().mean())
        p1 = probabilities(fe, w, 1.0, out_idx)
        tau = fit_temperature(fe, w, out_idx)
        w.temperature = tau
        pt = probabilities(fe, w, tau, out_idx)
        report["kinds"][name] = {
            "heldout_top1": acc,
            "fit_top1": 100.0 * float((predictions(fe, w, fit_idx) == fe.labels[fit_idx]).double().mean()),
            "temperature": tau,
            "heldout_nll_before": nll(p1, y_out), "heldout_nll_after": nll(pt, y_out),
            "heldout_ece_before": expected_calibration_error(p1, y_out),
            "heldout_ece_after": expected_calibration_error(pt, y_out),
        }
    if kind == "auto":
        order = ["uniform", "poly", "bins"]  # ties: the simpler
        best = max(order, key=lambda k: (report["kinds"][k]["heldout_top1"], -order.index(k)))
    elif kind in candidates:
        best = kind
    else:
        raise InputError(f"--kind must be auto, uniform, poly or bins, got {kind!r}")
    chosen = candidates[best]
    chosen.info = {**(chosen.info or {}), "chosen": best, "report": report}
    report["chosen"] = best
    report["heldout_top1_change_vs_uniform"] = {k: report["kinds"][k]["heldout_top1"] - report["kinds"]["uniform"]["heldout_top1"]
                                                for k in ("poly", "bins")}
    return chosen, report
