"""Winoground (Thrush et al., 2022): text, image and group scores of diffusion models and contrastive baselines.

The data is read by data/winoground.py, pairs are scored by tasks/matching.py (the image score on
null-normalised scores as well) or by a baseline of baselines.py, and every example is one record of
the resumable loop (loop.py).
"""
from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.images import Unreadable, UnreadableImageError
from ..data.winoground import WinogroundExample
from ..engine import Scorer
from ..errors import InputError
from ..loop import LoopStats, RecordLoop
from .matching import as_array, check_same_inputs, mean_scores, null_normalized, pair_errors

TAG_ORDER = ("Overall", "Object", "Relation", "Both")
KINDS = ("text", "image", "group")
Z95 = 1.96


def _as_scores(scores) -> np.ndarray:
    """Scores as a float64 array (..., caption, image) with trailing shape (2, 2)."""
    s = as_array(scores)
    if s.ndim < 2 or s.shape[-2:] != (2, 2):
        raise InputError(f"Winoground scores must have shape (..., 2, 2) indexed [caption, image], got {s.shape}")
    return s


def text_correct(scores) -> np.ndarray:
    """Per example: each image prefers its own caption, s[0,0] > s[1,0] and s[1,1] > s[0,1] (ties are wrong)."""
    s = _as_scores(scores)
    return (s[..., 0, 0] > s[..., 1, 0]) & (s[..., 1, 1] > s[..., 0, 1])


def image_correct(scores) -> np.ndarray:
    """Per example: each caption prefers its own image, s[0,0] > s[0,1] and s[1,1] > s[1,0] (ties are wrong)."""
    s = _as_scores(scores)
    return (s[..., 0, 0] > s[..., 0, 1]) & (s[..., 1, 1] > s[..., 1, 0])


def group_correct(scores) -> np.ndarray:
    """Per example: both text and image correct."""
    return text_correct(scores) & image_correct(scores)


def _summary(correct: np.ndarray) -> dict:
    n = int(correct.size)
    p = float(correct.mean())
    return {"score": 100.0 * p, "ci95": 100.0 * Z95 * math.sqrt(p * (1.0 - p) / n), "n": n}


def winoground_scores(scores, tags: list[str]) -> dict:
    """Text/image/group score in percent with a normal 95% interval, overall and per collapsed tag.

    scores: (N, 2, 2) indexed [example, caption, image], higher = better match; tags: N collapsed tags.
    Returns {tag: {kind: {"score", "ci95", "n"}}} for "Overall", then Object, Relation, Both, then others.
    """
    s = _as_scores(scores)
    if s.ndim != 3 or s.shape[0] == 0:
        raise InputError(f"Winoground scores must have shape (N, 2, 2) with N >= 1, got {s.shape}")
    tags = list(tags)
    if len(tags) != s.shape[0]:
        raise InputError(f"expected one tag per example ({s.shape[0]}), got {len(tags)} tags")
    correct = {"text": text_correct(s), "image": image_correct(s), "group": group_correct(s)}
    tag_arr = np.asarray(tags, dtype=object)
    present = set(tags)
    order = ["Overall"] + [t for t in TAG_ORDER[1:] if t in present]
    order += sorted(present - set(order))
    result = {}
    for tag in order:
        mask = np.ones(len(tags), dtype=bool) if tag == "Overall" else tag_arr == tag
        result[tag] = {kind: _summary(c[mask]) for kind, c in correct.items()}
    return result


def format_scores(result: dict) -> list[str]:
    """Lines like 'Overall text score: 38.5 +/- 4.8', per tag and kind, in the order of `result`."""
    return [f"{tag if str(tag).strip() else '(no tag)'} {kind} score: {by_kind[kind]['score']:.1f} +/- "
            f"{by_kind[kind]['ci95']:.1f}" for tag, by_kind in result.items() for kind in KINDS]


def normalized_image_scores(scores, uncond) -> np.ndarray:
    """Winoground scores (..., 2, 2) [caption, image] with each image's unconditional score u (..., 2) removed.

    It changes the image score only (matching.null_normalized): text comparisons are within one image.
    """
    return null_normalized(_as_scores(scores), uncond)


# conditions of one example: caption_0, caption_1 and the empty prompt (the unconditional score)
N_CONDS = 3
UNCOND = 2


def diffusion_example_scores(scorer: Scorer, latents: torch.Tensor, conds: torch.Tensor, timesteps: list[int],
                             n_trials: int = 1, randomize_noise: bool = False, noise_period: int = 32,
                             loss: str = "l2") -> dict:
    """One example's diffusion scores s(c, i) = -E_{t,ε}[err(c, i)] with the same (t, ε) for every pair.

    latents: (2, C, H, W) for image_0, image_1; conds: (3, ...) for caption_0, caption_1, "".
    Returns errors (3, 2, n_t, n_trials) float32, scores (2, 2) [caption, image] and uncond (2,)
    [image] = -mean error of the empty prompt, both float64.
    """
    if latents.shape[0] != 2 or conds.shape[0] != N_CONDS:
        raise InputError(f"expected 2 image latents and {N_CONDS} conditions (caption_0, caption_1, empty prompt), "
                         f"got {latents.shape[0]} and {conds.shape[0]}")
    errors = pair_errors(scorer, latents, conds, timesteps, n_trials, randomize_noise, noise_period, loss)
    neg_mean = mean_scores(errors)  # (3, 2)
    return {"errors": errors, "t": torch.as_tensor(timesteps, dtype=torch.long),
            "scores": neg_mean[:2].clone(), "uncond": neg_mean[UNCOND].clone()}


# ---------------------------------------------------------------- runs


def record_file(folder: str | os.PathLike, example_id: int) -> Path:
    """Where an example's scores are stored: <folder>/<id>.pt."""
    return Path(folder) / f"{example_id}.pt"


def record_problem(record) -> str | None:
    """What is wrong with a Winoground record, or None."""
    if not isinstance(record, dict) or not {"id", "tag", "scores"} <= set(record):
        return "expected a dict with keys id, tag and scores"
    if tuple(torch.as_tensor(record["scores"]).shape) != (2, 2):
        return f"expected scores of shape (2, 2), found {tuple(torch.as_tensor(record['scores']).shape)}"
    return None


def record_matches(by_id: dict[int, WinogroundExample], path, record: dict) -> None:
    """InputError when a record's captions are not its example's now (another or an edited copy of the data under the
    same run folder); records written before captions were stored resume (matching.check_same_inputs)."""
    ex = by_id.get(record["id"])
    if ex is not None:
        check_same_inputs(path, "example", int(ex.id), record, {"captions": [ex.caption_0, ex.caption_1]})


def open_examples(by_id: dict[int, WinogroundExample], ids: list[int]) -> tuple[list, list]:
    """([(id, (example, [image_0, image_1]))] decoded, [(id, Unreadable)] whose image cannot be decoded)."""
    loaded, bad = [], []
    for i in ids:
        ex = by_id[i]
        try:
            loaded.append((i, (ex, [ex.open_image(0), ex.open_image(1)])))
        except UnreadableImageError as e:
            bad.append((i, Unreadable(int(ex.id), e.name, e.found)))
    return loaded, bad


def run_examples(examples: list[WinogroundExample], folder: str | os.PathLike,
                 score_example: Callable[[WinogroundExample, list], dict], desc: str = "",
                 show_progress: bool = True, skip_unreadable: bool = False,
                 unreadable: list[Unreadable] = ()) -> LoopStats:
    """Score the examples without a record in `folder`, saving {id, tag, captions, scores, ...} atomically each.

    `score_example(ex, images)` returns at least `scores` (2, 2) [caption, image]. The returned stats hold
    every example's record in `records` (id -> record; finished ones are read back, not recomputed), the
    examples held by other processes waited for. A record scored on other captions than its example's now
    is refused (record_matches). Unreadable images as in loop.RecordLoop.
    """
    by_id = {int(ex.id): ex for ex in examples}
    with RecordLoop(folder, partial(record_file, folder), record_problem, partial(record_matches, by_id),
                    unit="examples", desc=desc, show_progress=show_progress, skip_unreadable=skip_unreadable,
                    unreadable=unreadable, collect=True) as loop:
        for [(i, (ex, images))] in loop.groups(by_id, partial(open_examples, by_id), wait=True):
            record = {"id": int(ex.id), "tag": ex.collapsed_tag, "captions": [ex.caption_0, ex.caption_1],
                      **score_example(ex, images)}
            assert tuple(record["scores"].shape) == (2, 2), record["scores"].shape
            loop.save(i, record)
    return loop.stats


def ordered_records(examples: list[WinogroundExample], stats: LoopStats) -> list[dict]:
    """The records of a run in example order (examples left out have none)."""
    return [stats.records[int(ex.id)] for ex in examples if int(ex.id) in stats.records]


def summary_line(folder: str | os.PathLike, stats: LoopStats, summary: dict) -> str:
    """The last line of a Winoground run: the overall scores, then examples computed now and before, repaired, left out."""
    overall = summary["scores"]["Overall"]
    scores = ", ".join(f"{kind} score {overall[kind]['score']:.1f}" for kind in KINDS)
    parts = [f"{stats.done} computed now", f"{len(stats.records) - stats.done} already done",
             f"{stats.repaired} repaired", *stats.unreadable_part()]
    return f"{folder}: {scores} over {summary['n']} examples ({', '.join(parts)})"


def summarize(records: list[dict]) -> dict:
    """Text/image/group scores of saved records; with unconditional scores also the normalised ones."""
    if not records:
        raise InputError("no Winoground records to summarise; expected at least one scored example")
    scores = np.stack([_as_scores(r["scores"]) for r in records])  # (N, 2, 2)
    tags = [r["tag"] for r in records]
    summary = {"n": len(records), "scores": winoground_scores(scores, tags), "normalized": None}
    if all(r.get("uncond") is not None for r in records):
        uncond = np.stack([np.asarray(r["uncond"], dtype=np.float64) for r in records])  # (N, 2)
        summary["normalized"] = winoground_scores(normalized_image_scores(scores, uncond), tags)
    return summary


def summary_lines(summary: dict) -> list[str]:
    """format_scores lines; the normalised image and group scores follow their raw lines when present."""
    raw = format_scores(summary["scores"])
    if summary.get("normalized") is None:
        return raw
    lines = []
    for line, norm in zip(raw, format_scores(summary["normalized"])):
        lines.append(line)
        if " text score:" not in line:  # the text score cannot change: shifts within one image cancel
            lines.append(norm.replace(" score:", " score (normalized):"))
    return lines
