"""Class probabilities from a run's candidate scores: temperature scaling, calibration error, shipped temperatures.

Probabilities are softmax(-score / τ) over the candidates, summed over a class's candidates (several prompts of one
class), where a candidate's score is its paired mean error (schedules.staged.paired_scores; lower is better). Here:
- class_logits, temperature_for, fit_calibration: class log-scores from candidate scores, and the τ (with
  fit_calibration, optionally one log-prior per class as well) minimising the negative log-likelihood of the labels;
- nll, reliability_bins, expected_calibration_error, bootstrap_interval: how well calibrated probabilities are;
- candidate_classes_of, readable_records, RecordScores, load_record_scores: the paired scores of every record of a
  run folder (any schedule), shifted as the run's schedule shifted them;
- the calibration file (calibration.json beside a model's model_index.json): the temperatures fitted per loss on
  held-out images by scripts/calibrate.py, read by DiffusionClassifier, and the class offsets fitted with them
  (load_calibration, write_calibration, shipped_temperature; shipped_offsets and resolve_offsets: the offsets the
  entry scripts' schedules apply by default);
- run_temperature, summary, plot_reliability: the temperature of a run's records and their report at it.

The class offsets themselves (ClassOffsets: their format, the shift the schedules add, what a run's manifest keeps)
are in class_offsets; timestep weights learned from full evaluations (and their temperatures) in timestep_weights.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .class_offsets import NO_OFFSETS, ClassOffsets, candidates_digest, checked_offsets, run_offsets
from .errors import InputError, MissingError
from .records import CLASSIFICATION_KEYS, load_record, local_model, not_classification, read_manifest_settings, write_json
from .schedules.staged import paired_scores
from .weighting import run_weights


# ---------------------------------------------------------------- candidate scores -> class scores


def class_logits(cand_logits: torch.Tensor, candidate_class, labels: torch.Tensor) -> torch.Tensor:
    """(N, C) class log-scores from candidate logits (N, K): log-sum-exp over a class's candidates (several prompts
    of one class), C covering every candidate's class and every label."""
    cc = torch.as_tensor(candidate_class)
    n_cls = int(max(int(cc.max()) + 1, int(labels.max()) + 1 if len(labels) else 0))
    out = torch.full((cand_logits.shape[0], n_cls), -math.inf, dtype=cand_logits.dtype)
    for c in range(n_cls):
        m = cc == c
        if m.any():
            out[:, c] = torch.logsumexp(cand_logits[:, m], 1)
    return out


def candidate_classes_of(folder: Path, n_candidates: int) -> list[int]:
    """Dataset label of each candidate: the prompts' classidx of an eval_prob_adaptive run, else the identity."""
    settings = read_manifest_settings(folder)
    prompts = settings.get("prompts")
    if prompts and len(prompts) == n_candidates:
        try:
            return [int(r[1]) for r in prompts]
        except (TypeError, ValueError, IndexError, KeyError):
            raise InputError(f"{folder}: expected the manifest's prompts as [prompt, classidx] rows, found "
                             f"{str(prompts)[:80]}") from None
    return list(range(n_candidates))


def readable_records(folder: str | Path):
    """(path, record) of every readable <index>.pt of a run folder holding 'errors' and 'label' (truncated files are
    skipped, as print_acc does); MissingError when the folder or its records are missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingError(f"run folder {folder} does not exist")
    paths = sorted((p for p in folder.glob("*.pt") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not paths:
        raise MissingError(f"{folder} holds no records (<index>.pt)")
    for path in paths:
        try:
            rec = load_record(path)
        except Exception:  # noqa: BLE001 - a truncated file is skipped
            continue
        if not isinstance(rec, dict) or any(k not in rec for k in CLASSIFICATION_KEYS):  # image-text items too
            raise not_classification(path, rec)
        problem = errors_problem(rec["errors"])
        if problem:
            raise InputError(f"{path}: expected 'errors' {{candidate index: {{'t', 'pred_errors'}}}} of a classification "
                             f"record, found {problem}")
        yield path, rec


def errors_problem(errors) -> str | None:
    """What is wrong with a record's 'errors' (candidate index -> {'t': (n,), 'pred_errors': (n, ...)}), or None."""
    if not isinstance(errors, dict) or not errors:
        return "no candidates" if isinstance(errors, dict) else type(errors).__name__
    for c, e in errors.items():
        if not isinstance(c, int) or c < 0:
            return f"candidate key {c!r}"
        if not isinstance(e, dict) or not all(isinstance(e.get(k), torch.Tensor) for k in ("t", "pred_errors")):
            return f"candidate {c} without tensors 't' and 'pred_errors'"
        if e["t"].dim() != 1 or e["pred_errors"].dim() < 1 or len(e["t"]) != len(e["pred_errors"]):
            return f"candidate {c} with {tuple(e['t'].shape)} timesteps and {tuple(e['pred_errors'].shape)} errors"
    return None


# ---------------------------------------------------------------- temperature and calibration error


def temperature_for(cand_scores: torch.Tensor, labels: torch.Tensor, candidate_class) -> float:
    """τ minimising the negative log-likelihood of the labels under softmax(-score / τ) (class_logits over a class's
    candidates), for (N, K) candidate scores (lower is better; inf: never evaluated)."""
    return fit_calibration(cand_scores, labels, candidate_class)[0]


OFFSET_PRIOR_SD = 3.0  # fit_calibration: the prior's spread of a class's log-prior offset


def fit_calibration(cand_scores: torch.Tensor, labels: torch.Tensor, candidate_class,
                    offsets: bool = False) -> tuple[float, torch.Tensor | None]:
    """(τ, b) minimising the negative log-likelihood of the labels under softmax(class_logits(-score / τ) + b).

    Without `offsets` b is None (temperature scaling). With it, b (C,) float64 is one log-prior per class, summing to
    zero (a shift of every b changes nothing): the share of a class that its prompts' errors under- or overstate on
    every image, e.g. a prompt whose denoising is easier whatever the image. That is vector scaling with one shared
    temperature; it moves probability between classes, so it can change the top class, and it needs enough
    labelled images of every class to fit (a few hundred per class). A weak normal prior on b (standard deviation
    OFFSET_PRIOR_SD) keeps the offsets of classes no image is labelled with finite."""
    s = cand_scores.double()
    s = s - s.masked_fill(~torch.isfinite(s), math.inf).min(1, keepdim=True).values  # the best candidate at 0
    finite = s[torch.isfinite(s)]
    spread = float(finite[finite > 0].median()) if bool((finite > 0).any()) else 1.0
    log_tau = torch.tensor(math.log(spread), dtype=torch.float64, requires_grad=True)
    n_cls = class_logits(s[:1], candidate_class, labels).shape[1]
    raw = torch.zeros(n_cls, dtype=torch.float64, requires_grad=offsets)
    params = [log_tau, raw] if offsets else [log_tau]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=200 if offsets else 100, line_search_fn="strong_wolfe")

    def logits():
        out = class_logits(-s / log_tau.exp(), candidate_class, labels)
        return out + (raw - raw.mean()) if offsets else out

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits(), labels)
        if offsets:
            loss = loss + 0.5 * ((raw - raw.mean()) ** 2).sum() / (OFFSET_PRIOR_SD ** 2 * len(labels))
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_tau.detach().exp()), (raw - raw.mean()).detach() if offsets else None


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(-torch.log(probs[torch.arange(len(labels)), labels].clamp_min(1e-300)).mean())


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> list[dict]:
    """The top class's confidence in equal-width bins of (0, 1]: each non-empty bin's range, count, mean confidence
    and accuracy (a reliability diagram's points)."""
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    out = []
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            out.append({"lo": lo, "hi": hi, "count": int(m.sum()), "confidence": float(conf[m].double().mean()),
                        "accuracy": float(correct[m].mean())})
    return out


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE in percent: |accuracy - confidence| of the top class, averaged over equal-width confidence bins."""
    n = len(labels)
    return 100.0 * sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(probs, labels, n_bins))


def bootstrap_interval(metric, probs: torch.Tensor, labels: torch.Tensor, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of metric(probs, labels) over images resampled with replacement."""
    g = torch.Generator().manual_seed(seed)
    vals = sorted(metric(probs[i], labels[i]) for i in torch.randint(len(labels), (n_boot, len(labels)), generator=g))
    lo = int(math.floor((1 - level) / 2 * (n_boot - 1)))
    return vals[lo], vals[n_boot - 1 - lo]


# ---------------------------------------------------------------- any run's records, shipped temperature and offsets


@dataclass
class RecordScores:
    """Paired scores of a run's records (any schedule): the candidate scores that probabilities are made of."""

    scores: torch.Tensor  # (N, K) float64, schedules.staged.paired_scores of each record
    labels: torch.Tensor  # (N,)
    preds: torch.Tensor  # (N,) the records' own predictions (dataset labels)
    indices: list[int]
    candidate_class: list[int]
    evaluations: torch.Tensor  # (N,) denoiser evaluations of each record

    def probabilities(self, temperature: float, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C) class probabilities softmax(-score / temperature), summed over a class's candidates; `offsets` (C,):
        log-priors added to the class logits (fit_calibration)."""
        logits = class_logits(-self.scores / temperature, self.candidate_class, self.labels)
        return torch.softmax(logits if offsets is None else logits + offsets.to(logits), 1)

    def select(self, indices) -> "RecordScores":
        """The records of these dataset indices, in this order; one the run has not scored is an InputError."""
        pos = {i: j for j, i in enumerate(self.indices)}
        missing = [i for i in indices if i not in pos]
        if missing:
            raise InputError(f"{len(missing)} of the images asked for have no record (first: index {missing[0]})")
        sel = torch.tensor([pos[i] for i in indices], dtype=torch.long)
        return RecordScores(self.scores[sel], self.labels[sel], self.preds[sel], [int(i) for i in indices],
                            self.candidate_class, self.evaluations[sel])

    @staticmethod
    def cat(parts: list["RecordScores"]) -> "RecordScores":
        """The records of several runs of the same candidates, one after another."""
        k = {p.scores.shape[1] for p in parts}
        if len(k) > 1 or len({tuple(p.candidate_class) for p in parts}) > 1:
            raise InputError(f"the runs score different candidates ({sorted(k)} prompts); use one prompt set at a time")
        return RecordScores(torch.cat([p.scores for p in parts]), torch.cat([p.labels for p in parts]),
                            torch.cat([p.preds for p in parts]), sum((p.indices for p in parts), []),
                            parts[0].candidate_class, torch.cat([p.evaluations for p in parts]))


RUN_WEIGHTS = "run"  # load_record_scores: the timestep weights the run ranked by (its manifest), if any


def load_record_scores(folder: str | Path, weights: torch.Tensor | str | None = RUN_WEIGHTS,
                       shifted: bool = True) -> RecordScores:
    """The paired scores of every readable record of a classification run folder (staged, statistical or full);
    `weights`: (T,) per-timestep weights of the errors (TimestepWeights.weights), None for plain means, RUN_WEIGHTS
    for those the run's records were ranked by (weighting.run_weights: InputError where they are not found).
    `shifted`: with the shift of the class offsets the run's schedule applied (run_offsets), as it ranked."""
    if isinstance(weights, str):
        if weights != RUN_WEIGHTS:
            raise ValueError(f"weights must be a tensor, None or {RUN_WEIGHTS!r}, got {weights!r}")
        found = run_weights(folder)
        weights = None if found is None else found.weights
    rows, labels, preds, indices, evals = [], [], [], [], []
    for path, rec in readable_records(folder):
        data = rec["errors"]
        k = max(data) + 1 if data else 0
        if rows and k != rows[0].shape[0]:
            raise InputError(f"{path}: {k} candidates, other records of {folder} have {rows[0].shape[0]}")
        rows.append(paired_scores(data, k, weights))
        labels.append(int(rec["label"]))
        preds.append(int(rec["pred"]))
        indices.append(int(path.stem))
        evals.append(sum(len(e["t"]) for e in data.values()))
    if not rows:
        raise InputError(f"{folder}: no readable records")
    applied = run_offsets(folder) if shifted else None
    scores = torch.stack(rows)
    if applied:
        shift = torch.tensor(applied["shift"], dtype=torch.float64)
        if len(shift) != scores.shape[1]:
            raise InputError(f"{folder}: its manifest shifts {len(shift)} candidates, its records score {scores.shape[1]}")
        scores = scores + shift
    return RecordScores(scores, torch.tensor(labels), torch.tensor(preds), indices,
                        candidate_classes_of(Path(folder), rows[0].shape[0]), torch.tensor(evals))


CALIBRATION_FILE = "calibration.json"  # beside a model's model_index.json: its temperatures, per loss
# without a shipped temperature: probabilities softmax(-score / 1e-3), sharp enough that they do not all sit near
# 1/K (the errors of rival prompts differ by about 1e-3 on Stable Diffusion), but not calibrated
UNCALIBRATED_TEMPERATURE = 1e-3


def calibration_path(model: str | Path) -> Path:
    """Where the calibration of a model folder (or the file itself) is."""
    model = Path(model)
    return model / CALIBRATION_FILE if model.is_dir() or not model.suffix else model


def load_calibration(model: str | Path | None) -> dict:
    """The temperatures shipped with a local model folder ({loss: entry with 'temperature'}), {} for a hub id or a
    folder without a calibration file; InputError for a malformed one."""
    if model is None:
        return {}
    path = calibration_path(model)
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        out = {str(loss): dict(entry) for loss, entry in raw["temperatures"].items()}
        bad = [loss for loss, entry in out.items() if not float(entry["temperature"]) > 0]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: expected a calibration file with 'temperatures': {{loss: {{'temperature': positive "
                         f"number, ...}}}} (scripts/calibrate.py writes one), found an unreadable one ({e})") from None
    if bad:
        raise InputError(f"{path}: the temperature of loss {bad[0]!r} is not a positive number")
    for loss, entry in out.items():
        if entry.get("class_offsets") is not None:
            ClassOffsets.from_entry(entry["class_offsets"], f"{path}, loss {loss!r}")
    return out


def fitted_entry(entries: dict, loss: str, error_space: str | None = None,
                 timestep_weights: str | None = None) -> dict | None:
    """The calibration entry of `loss` among a model's entries (load_calibration), or None: none fitted, fitted on
    errors of another error space than `error_space` (a flow model's velocity and ε-space errors differ in scale)
    when both are known, or on scores weighted otherwise than `timestep_weights` (the digest of the weights the
    scores use, None for plain means; an entry without one was fitted on plain means)."""
    entry = entries.get(loss)
    if entry is None:
        return None
    settings = entry.get("settings") or {}
    fitted_in = settings.get("error_space")
    if error_space is not None and fitted_in is not None and fitted_in != error_space:
        return None
    if settings.get("timestep_weights") != timestep_weights:
        return None
    return entry


def fitted_temperature(entries: dict, loss: str, error_space: str | None = None,
                       timestep_weights: str | None = None) -> float | None:
    """The temperature of the matching entry (fitted_entry), or None."""
    entry = fitted_entry(entries, loss, error_space, timestep_weights)
    return None if entry is None else float(entry["temperature"])


def shipped_temperature(model: str | Path | None, loss: str, error_space: str | None = None,
                        timestep_weights: str | None = None) -> float | None:
    """The temperature fitted for `loss` (`error_space` and `timestep_weights`) on the model's held-out images, or
    None."""
    return fitted_temperature(load_calibration(model), loss, error_space, timestep_weights)


def write_calibration(model: str | Path, loss: str, temperature: float, info: dict,
                      offsets: "ClassOffsets | None" = None) -> Path:
    """Add (or replace) the temperature of `loss` (and its class `offsets`, if any) in the model folder's calibration
    file; the other losses are kept."""
    path = calibration_path(model)
    entries = load_calibration(path)
    entries[loss] = {"temperature": float(temperature), **info,
                     **({"class_offsets": offsets.entry()} if offsets is not None else {})}
    write_json(path, {"format": "diffusion-classifier calibration",
                      "about": "probabilities softmax(-score / temperature), score: a prompt's paired mean error with "
                               "this loss; fitted on held-out labelled images by scripts/calibrate.py; class_offsets: "
                               "log-priors per class fitted with their own temperature, which the schedules apply",
                      "temperatures": dict(sorted(entries.items()))})
    return path


def shipped_offsets(model: str | Path | None, loss: str, error_space: str | None, timestep_weights: str | None,
                    candidates, entries: dict | None = None) -> ClassOffsets | None:
    """The class offsets shipped with a local model folder (or among its calibration `entries`, load_calibration)
    for this loss, error space and timestep weights, fitted on these candidates (candidates_digest), or None."""
    entry = fitted_entry(load_calibration(model) if entries is None else entries, loss, error_space, timestep_weights)
    if entry is None or entry.get("class_offsets") is None:
        return None
    found = ClassOffsets.from_entry(entry["class_offsets"], str(model))
    return found if found.candidates == candidates_digest(candidates) else None


def resolve_offsets(choice: str | None, model: str | Path | None, loss: str, error_space: str | None,
                    timestep_weights: str | None, candidates, entries: dict | None = None) -> ClassOffsets | None:
    """The class offsets a run applies: none with `choice` NO_OFFSETS, else the shipped ones (shipped_offsets)."""
    if choice is not None and choice != NO_OFFSETS and choice != "shipped":
        raise InputError(f"class offsets must be 'shipped' or '{NO_OFFSETS}', got {choice!r}")
    return None if choice == NO_OFFSETS else shipped_offsets(model, loss, error_space, timestep_weights, candidates,
                                                             entries)


def run_temperature(folder: str | Path, weights=None, digest: str | None = None,
                    temperature: float | None = None) -> tuple[float, str]:
    """(τ, where it comes from) for the probabilities of a run's records (load_record_scores): `temperature` if
    given, else the one fitted with the class offsets the run applied, else the one shipped with the run's model for
    its loss and the timestep weights of digest `digest` (calibration.json), else that of the weights file
    `weights` (TimestepWeights), else the uncalibrated default."""
    if temperature is not None:
        return temperature, "--temperature"
    settings = read_manifest_settings(folder)
    applied = checked_offsets(settings.get("class_offsets"), folder)  # run_offsets
    if applied:
        return float(applied["temperature"]), "fitted with the class offsets the run applied"
    loss = settings.get("loss", "l2")
    tau = shipped_temperature(local_model(settings.get("model")), loss, settings.get("error_space"), digest)
    if tau is not None:
        return tau, f"shipped with the model for --loss {loss}" + (" and these timestep weights" if digest else "")
    if weights is not None:
        return weights.temperature, "the weights file's"
    return UNCALIBRATED_TEMPERATURE, "uncalibrated: the model ships none for this loss"


def summary(rs: RecordScores, tau: float, n_boot: int = 1000, n_bins: int = 15, seed: int = 0,
            offsets: torch.Tensor | None = None) -> dict:
    """Top-1 (the records' own predictions), evaluations per image, NLL and ECE (with bootstrap intervals) and the
    reliability bins of the records at temperature tau (and class `offsets`, fit_calibration)."""
    pr = rs.probabilities(tau, offsets)
    ece = lambda p, y: expected_calibration_error(p, y, n_bins)  # noqa: E731
    return {"n": len(rs.labels), "top1": 100.0 * float((rs.preds == rs.labels).double().mean()),
            "evaluations_per_image": float(rs.evaluations.double().mean()), "temperature": tau,
            "nll": nll(pr, rs.labels), "nll_interval": bootstrap_interval(nll, pr, rs.labels, n_boot, seed=seed),
            "ece": ece(pr, rs.labels), "ece_interval": bootstrap_interval(ece, pr, rs.labels, n_boot, seed=seed),
            "reliability": reliability_bins(pr, rs.labels, n_bins)}


def plot_reliability(path: Path, rows: dict[str, dict], title: str) -> None:
    """One panel per run: accuracy against confidence per bin (bars), the diagonal, and the images per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(max(6.0, 4.2 * len(rows)), 4.4), squeeze=False)
    for ax, (name, s) in zip(axes[0], rows.items()):
        bins = s["reliability"]
        mids = [(b["lo"] + b["hi"]) / 2 for b in bins]
        width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
        ax.bar(mids, [b["accuracy"] for b in bins], width=width * 0.9, color="tab:blue", alpha=0.8, label="accuracy")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="tab:orange", ms=3,
                label="(confidence, accuracy)")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        share = ax.twinx()
        share.plot(mids, [b["count"] / s["n"] for b in bins], "-o", color="gray", lw=1, ms=2)
        share.set_ylim(0, 1)
        share.set_ylabel("share of images (gray)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence of the top class")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}\nECE {s['ece']:.2f}%, NLL {s['nll']:.3f} (n={s['n']})", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
