"""Class offsets: one log-prior per class, fitted with its own temperature, that the schedules apply.

A model can favour some classes whatever the image (a prompt whose denoising is easier); a temperature does not mend
that, one log-prior per class does (calibration.fit_calibration, offsets=True). Here:
- ClassOffsets: the offsets and their temperature, their entry in a calibration file (calibration.json, written by
  scripts/calibrate.py), and the shift of each candidate's score that the schedules add before every decision;
- candidates_digest, run_candidates: the candidate set offsets are fitted on and apply to;
- NO_OFFSETS: the --class_offsets choice that applies none;
- run_offsets, checked_offsets: the shift a run's schedule applied, as its manifest keeps it.

Which offsets a run applies (the ones shipped in a model's calibration file: calibration.shipped_offsets,
calibration.resolve_offsets) and the scores of a run's records with the shift added (calibration.load_record_scores)
are in calibration.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError
from .records import read_manifest_settings


NO_OFFSETS = "none"  # --class_offsets none: decide on the errors alone, even where the model ships offsets


def candidates_digest(candidates) -> str:
    """Short hash of a run's candidates (eval_prob_adaptive's [prompt, classidx] rows, eval_prob_dit's class ids):
    class offsets are fitted on one candidate set's errors (a prompt's wording is part of its bias) and apply to it."""
    return hashlib.sha1(json.dumps(candidates).encode()).hexdigest()[:10]  # tuples are written as lists


def run_candidates(settings: dict):
    """The candidates of a run from its manifest settings: its prompts, else its classes (None if neither)."""
    return settings.get("prompts") or settings.get("classes")


@dataclass(frozen=True)
class ClassOffsets:
    """One log-prior per class, fitted with its own temperature on held-out images (calibration.fit_calibration,
    offsets=True).

    Probabilities are softmax(class_logits(-score / temperature) + offsets), the same as softmax(-(score + shift) /
    temperature) with each candidate's score shifted by -temperature x its class's offset (`shift`). The schedules
    add that shift to every candidate's errors before each decision, so that the class they answer is the most
    probable one; records keep the raw errors and the run's manifest keeps the shift (calibration.load_record_scores adds
    it)."""

    temperature: float
    offsets: torch.Tensor  # (C,) float64, summing to zero
    candidates: str | None = None  # candidates_digest of the candidates they were fitted on
    info: dict | None = None  # what they were fitted on (scripts/calibrate.py: images, runs, held-out figures)

    def shift(self, candidate_class) -> torch.Tensor:
        """(K,) float64: -temperature x the offset of each candidate's class (a class beyond the offsets: 0)."""
        cc = torch.as_tensor(list(candidate_class), dtype=torch.long)
        b = torch.zeros(int(max(len(self.offsets), int(cc.max()) + 1 if len(cc) else 0)), dtype=torch.float64)
        b[: len(self.offsets)] = self.offsets.double()
        return -self.temperature * b[cc]

    def setting(self, candidate_class) -> dict:
        """The manifest entry of a run that applies them: the temperature and each candidate's shift."""
        return {"temperature": self.temperature, "shift": [float(v) for v in self.shift(candidate_class)]}

    def entry(self) -> dict:
        """Their entry in a calibration file."""
        return {"temperature": self.temperature, "offsets": [float(v) for v in self.offsets],
                "candidates": self.candidates, **(self.info or {})}

    @staticmethod
    def from_entry(raw, where: str) -> "ClassOffsets":
        """The offsets of a calibration entry, checked (InputError naming `where`)."""
        try:
            tau, values, cands = float(raw["temperature"]), [float(v) for v in raw["offsets"]], raw.get("candidates")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"{where}: expected class_offsets {{'temperature': positive number, 'offsets': [one "
                             f"number per class], 'candidates': digest}}, found {raw!r:.80} ({e})") from None
        if not (tau > 0 and math.isfinite(tau)) or not values or not all(math.isfinite(v) for v in values):
            raise InputError(f"{where}: class_offsets needs a positive temperature and finite offsets, found "
                             f"temperature {tau} and {len(values)} offsets")
        if cands is not None and not isinstance(cands, str):
            raise InputError(f"{where}: class_offsets' 'candidates' must be a digest string, found {cands!r}")
        info = {k: v for k, v in raw.items() if k not in ("temperature", "offsets", "candidates")}
        return ClassOffsets(tau, torch.tensor(values, dtype=torch.float64), cands, info or None)


def run_offsets(folder: str | Path) -> dict | None:
    """The class offsets a run's schedule applied ({'temperature', 'shift'}: ClassOffsets.setting), or None."""
    return checked_offsets(read_manifest_settings(folder).get("class_offsets"), folder)


def checked_offsets(applied, folder: str | Path) -> dict | None:
    """A manifest's class_offsets setting (run_offsets), checked; InputError for a malformed one."""
    if applied is None:
        return None
    try:
        ok = float(applied["temperature"]) > 0 and all(math.isfinite(float(v)) for v in applied["shift"])
    except (TypeError, ValueError, KeyError, IndexError):
        ok = False
    if not ok:
        raise InputError(f"{folder}: expected the manifest's class_offsets as {{'temperature': positive number, 'shift': "
                         f"[number per candidate]}}, found {str(applied)[:80]}")
    return applied
