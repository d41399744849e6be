"""A model folder loaded for scoring with a Scorer of one's own, and two runs' records compared image for image."""
from __future__ import annotations

import math
from pathlib import Path

import torch


def model_and_conditions(folder: str | Path, prompts: list[str]):
    """(model, conditions for Scorer.evaluate) of a model folder: a class-conditional DiT with the class labels
    0..len(prompts)-1, else any text-to-image family with `prompts` encoded."""
    from diffusion_classifier.families import load_any_model

    model = load_any_model(str(folder))
    if model.family == "dit":
        return model, torch.arange(len(prompts))
    return model, model.encode_prompts(list(prompts))


def mcnemar_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p of `gained` against `lost` discordant images."""
    n, k = gained + lost, min(gained, lost)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def compare_runs(base: tuple[str, object], other: tuple[str, object]) -> dict:
    """Two runs' records (name, calibration.RecordScores) on the images both scored: each run's top-1, images right
    and evaluations per image under its name, the images right only in `other` ('gained') and only in `base`
    ('lost'), and the exact McNemar p of that split."""
    both = sorted(set(base[1].indices) & set(other[1].indices))
    out, right = {"images": len(both)}, []
    for name, rs in (base, other):
        rs = rs.select(both)
        ok = rs.preds == rs.labels
        right.append(ok)
        out[name] = {"top1": 100.0 * float(ok.double().mean()), "correct": int(ok.sum()),
                     "evaluations_per_image": float(rs.evaluations.double().mean())}
    out["gained"], out["lost"] = int((right[1] & ~right[0]).sum()), int((right[0] & ~right[1]).sum())
    out["mcnemar_p"] = mcnemar_p(out["gained"], out["lost"])
    return out
