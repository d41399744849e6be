"""Timestep weights files: what they hold, their digest, the weights a model folder ships and the weights a run used.

A weights file (scripts/fit_timestep_weights.py, benchmarks/dit_weights.py) holds positive weights w(t) for the
timesteps 0..T-1 of a model; a schedule then ranks candidates by their weighted mean error mean w(t)·e and scores them
likewise (timestep_weights fits them). A model folder may ship one beside its model_index.json (SHIPPED_FILE, fitted
on images the model never trained on, for one --loss): the entry scripts and DiffusionClassifier apply it by default
to runs with that loss (resolve_weights; --timestep_weights none opts out). A run folder's manifest keeps the digest
of the file its records were ranked with, and run_weights finds that file again, so that a run's probabilities and
temperature use the scores the run ranked by.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError, MissingError
from .records import local_model, read_manifest_settings, write_json

SHIPPED_FILE = "timestep_weights.json"  # beside a model's model_index.json: the weights its runs apply by default
NO_WEIGHTS = "none"  # --timestep_weights none: plain means, even where the model ships weights


@dataclass
class TimestepWeights:
    """Positive weights per timestep 0..T-1 (mean 1 over the grid they were fit on) and a temperature."""

    weights: torch.Tensor  # (T,) float64
    kind: str = "uniform"
    temperature: float = 1.0
    info: dict | None = None
    loss: str | None = None  # the --loss of the errors they were fitted on (a shipped file applies to it only)

    def at(self, t: torch.Tensor) -> torch.Tensor:
        return self.weights[t.long()]

    def save(self, path: str | Path) -> None:
        write_json(path, {"format": "diffusion-classifier timestep weights", "T": len(self.weights),
                          "kind": self.kind, "temperature": self.temperature,
                          **({"loss": self.loss} if self.loss else {}),
                          "weights": [float(v) for v in self.weights], "info": self.info or {}})


def weights_digest(path: str | Path) -> str:
    """Short content hash of a weights file, for run folder names and manifests."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:10]


def uniform_weights(T: int = 1000) -> TimestepWeights:
    return TimestepWeights(torch.ones(T, dtype=torch.float64))


def load_weights(path: str | Path, T: int | None = None) -> TimestepWeights:
    """Weights written by scripts/fit_timestep_weights.py (JSON), checked."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"timestep weights file {path} does not exist; write one with scripts/fit_timestep_weights.py")
    try:
        raw = json.loads(path.read_text())
        w = torch.tensor(raw["weights"], dtype=torch.float64)
        temperature = float(raw.get("temperature", 1.0))
        loss = raw.get("loss")
        if loss is not None and not isinstance(loss, str):
            raise TypeError(f"'loss' must be a loss name, found {loss!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: expected a JSON timestep weights file with a 'weights' list ({e})") from None
    if w.dim() != 1 or not len(w) or not torch.isfinite(w).all() or (w <= 0).any():
        raise InputError(f"{path}: weights must be a non-empty list of positive finite numbers")
    if T is not None and len(w) != T:
        raise InputError(f"{path}: holds weights for {len(w)} timesteps, the model has {T}")
    if not temperature > 0:
        raise InputError(f"{path}: temperature must be positive, got {temperature}")
    return TimestepWeights(w, raw.get("kind", "file"), temperature, raw.get("info"), loss)


def shipped_weights_path(model: str | Path | None) -> Path | None:
    """The weights file shipped in a local model folder, or None (a hub id, or a folder without one)."""
    if model is None:
        return None
    path = Path(str(model)) / SHIPPED_FILE
    return path if path.is_file() else None


def resolve_weights(choice: str | Path | None, model: str | Path | None, T: int | None = None,
                    loss: str | None = None) -> tuple[TimestepWeights | None, str | None]:
    """(weights, their file's digest) a run applies, or (None, None) for plain means. `choice`: --timestep_weights,
    a file, NO_WEIGHTS, or None: the weights shipped in the model folder `model` when it has them and they were
    fitted for `loss` (weights fitted on one loss's errors are not applied to another's)."""
    if choice is not None and str(choice) == NO_WEIGHTS:
        return None, None
    path = shipped_weights_path(model) if choice is None else Path(choice)
    if path is None:
        return None, None
    weights = load_weights(path, T)
    if choice is None and loss is not None and weights.loss not in (None, loss):
        return None, None
    return weights, weights_digest(path)


def run_weights(folder: str | Path, candidates=()) -> TimestepWeights | None:
    """The weights the records of run `folder` were ranked by (its manifest's timestep_weights digest), None for
    plain means: found among the files `candidates` and the weights shipped with the run's model; InputError when
    none of them has that digest."""
    settings = read_manifest_settings(folder)
    digest = settings.get("timestep_weights")
    if not digest:
        return None
    files = [Path(c) for c in candidates if c is not None and str(c) != NO_WEIGHTS]
    files.append(shipped_weights_path(local_model(settings.get("model"))))
    for path in files:
        if path is not None and path.is_file() and weights_digest(path) == digest:
            return load_weights(path)
    raise InputError(f"{folder}: its records were ranked with timestep weights of digest {digest}, and neither the "
                     f"run's model folder nor the files given hold them; pass that file with --timestep_weights")
