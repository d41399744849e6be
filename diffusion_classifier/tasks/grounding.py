"""Referring expression comprehension: pick the candidate box an expression names, one record per expression.

Each candidate box becomes the image(s) the model scores (`views`: its crop padded to a square, or the whole
image with everything outside the box blanked, or both). A diffusion model scores candidate k by its
denoising error under the prompt, with every candidate of an expression on the same (t, ε). Errors of
different images under one text are not comparable as they stand (a region that is easy to denoise wins
whatever the text says), so by default each view's error under the empty prompt on the same (t, ε) is
subtracted: err(prompt, x_k) - err("", x_k) estimates -log p(prompt | x_k) + const (the ELBO of x_k under
the prompt against its ELBO without it), the likelihood ratio that ranks regions under a uniform prior on
which one is meant (tasks/matching.py). The schedules of schedules/ prune candidates as they prune
classes; CLIP and OpenCLIP score crop-text similarity. A hit is IoU(chosen box, gold box) > 0.5.
"""
from __future__ import annotations

import math
import os
from functools import partial
from typing import Callable, Sequence

import torch
from PIL import Image

from ..data.images import Unreadable, UnreadableImageError
from ..data.refcoco import Query, box_problem, iou
from ..engine import Jobs, Scorer, cat_conditions
from ..errors import InputError, warn
from ..loop import LoopStats
from .candidates import accuracy_by, candidate_scores, run_items_once, unique_ids
from .matching import null_normalized_errors

REGIONS = ("crop", "mask", "both")
SCORES = ("null", "raw")  # null-normalised errors (the default) or raw errors
HIT_IOU = 0.5
RECORD_KEYS = ("qid", "pred", "iou", "hit")
FILL = (0, 0, 0)  # what pads a crop and blanks a mask


# ---------------------------------------------------------------- regions


def pixel_bounds(box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box [x, y, w, h] as integer (left, top, right, bottom), rounded outwards and clipped to the image."""
    x, y, w, h = box
    width, height = size
    left, top = max(0, math.floor(x)), max(0, math.floor(y))
    right, bottom = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def pad_square(image: Image.Image, fill=FILL, aspect: tuple[int, int] = (1, 1)) -> Image.Image:
    """The image centred on the smallest canvas of the model's shape `aspect` = (H, W) that holds it (a square by
    default; nothing is cut), so that resizing it to the model's size distorts nothing."""
    w, h = image.size
    ah, aw = aspect
    width, height = max(w, math.ceil(h * aw / ah)), max(h, math.ceil(w * ah / aw))
    if (width, height) == (w, h):
        return image
    canvas = Image.new("RGB", (width, height), fill)
    canvas.paste(image, ((width - w) // 2, (height - h) // 2))
    return canvas


def square_crop(image: Image.Image, box, fill=FILL, aspect: tuple[int, int] = (1, 1)) -> Image.Image:
    """The box's pixels padded to a square, or to the shape `aspect` (the whole box, never cut)."""
    return pad_square(image.crop(pixel_bounds(box, image.size)), fill, aspect)


def masked(image: Image.Image, box, fill=FILL, aspect: tuple[int, int] = (1, 1)) -> Image.Image:
    """The whole image with everything outside the box blanked, padded to a square or to the shape `aspect`."""
    bounds = pixel_bounds(box, image.size)
    canvas = Image.new("RGB", image.size, fill)
    canvas.paste(image.crop(bounds), bounds[:2])
    return pad_square(canvas, fill, aspect)


def n_views(region: str) -> int:
    if region not in REGIONS:
        raise InputError(f"--region must be one of {', '.join(REGIONS)}, got {region!r}")
    return 2 if region == "both" else 1


def region_views(image: Image.Image, boxes: Sequence, region: str, fill=FILL,
                 aspect: tuple[int, int] = (1, 1)) -> list[Image.Image]:
    """The images scored for each box, candidate-major: [crop_0 | mask_0 | crop_0, mask_0, crop_1, ...], each
    padded to the model's shape `aspect` = (H, W) (square by default)."""
    n_views(region)
    views = []
    for box in boxes:
        if region in ("crop", "both"):
            views.append(square_crop(image, box, fill, aspect))
        if region in ("mask", "both"):
            views.append(masked(image, box, fill, aspect))
    return views


def check_boxes(query: Query, image: Image.Image) -> None:
    """InputError naming the image when a candidate or the gold box lies outside it."""
    for cid, box in [*query.candidates, ("gold", query.gold_box)]:
        problem = box_problem(box, *image.size)
        if problem:
            raise InputError(f"{query.image}: {'gold' if cid == 'gold' else f'candidate {cid}'} {problem} "
                             f"(query {query.qid}); expected boxes [x, y, w, h] within the image")


# ---------------------------------------------------------------- scoring


def candidate_evaluator(scorer: Scorer, latents: torch.Tensor, conds, views: int, normalize: bool,
                        loss: str = "l2", log: dict | None = None, count: Callable[[int], None] | None = None):
    """`evaluate(jobs)` for the schedules: job (cond = candidate k, t, noise) -> one error per job.

    Candidate k's error is the mean over its views v (latents[k * views + v]) of err(prompt, view) -
    err("", view) with `normalize`, else err(prompt, view); conds are (prompt, empty prompt). Every view and
    both prompts are evaluated on the job's (t, ε), in one batched call. `log` (candidate -> lists) collects
    the raw errors per job in job order; `count` gets the number of denoiser evaluations.
    """
    def evaluate(jobs: Jobs) -> torch.Tensor:
        k = jobs.cond
        per_view = [Jobs(k * views + v, torch.zeros_like(k), jobs.t, jobs.noise) for v in range(views)]
        expanded = Jobs.cat(per_view)
        if normalize:
            norm, raw = null_normalized_errors(scorer, latents, conds, expanded, null=1, loss=loss)  # (V J,), (V J, 2)
            raw = raw.reshape(views, len(jobs), 2)
            out = norm.reshape(views, len(jobs)).mean(0)
        else:
            raw = scorer.evaluate(latents, conds, expanded, loss).float().reshape(views, len(jobs), 1)
            out = raw[..., 0].mean(0)
        if count is not None:
            count(len(expanded) * raw.shape[-1])
        if log is not None:
            for c in k.unique().tolist():
                mask = k == c
                entry = log.setdefault(c, {"cond": [], "null": []})
                entry["cond"].append(raw[:, mask, 0].T)  # (n, V)
                if normalize:
                    entry["null"].append(raw[:, mask, 1].T)
        return out

    return evaluate


def choose(scores) -> int:
    """The candidate with the lowest error (ties: the lower index)."""
    return int(torch.argmin(torch.as_tensor(scores, dtype=torch.float64)))


def diffusion_query_scorer(encode_images: Callable, encode_prompts: Callable, scorer: Scorer, transform: Callable,
                           schedule_for: Callable[[int], Callable], region: str = "crop", template: str = "{}",
                           normalize: bool = True, loss: str = "l2", fill=FILL,
                           weights: torch.Tensor | None = None,
                           aspect: tuple[int, int] = (1, 1)) -> Callable[[Query, Image.Image], dict]:
    """score(query, image) -> the record's scores (and its denoiser `evaluations`): the schedule of
    `schedule_for(n_candidates)` over the candidates; scores are mean errors, weighted by `weights` (T,) if given
    (the weights the schedule decides with). Regions are padded to `aspect` = the model's (H, W) shape."""
    views = n_views(region)
    null = encode_prompts([""])

    def score(query: Query, image: Image.Image) -> dict:
        boxes = [box for _, box in query.candidates]
        prompt = template.format(query.expression)
        n = len(boxes)
        if n == 1:  # nothing to compare
            return {"prompt": prompt, "pred": 0, "errors": {}, "scores": [0.0], "evaluations": 0}
        pixels = torch.stack([transform(v) for v in region_views(image, boxes, region, fill, aspect)])  # (K V, 3, H, W)
        latents = encode_images(pixels)
        conds = cat_conditions([encode_prompts([prompt]), null])  # (2, ...): the prompt, ""
        log: dict = {}
        spent = [0]
        evaluate = candidate_evaluator(scorer, latents, conds, views, normalize, loss, log,
                                       lambda m: spent.__setitem__(0, spent[0] + m))
        result = schedule_for(n)(evaluate, 1, n)[0]
        errors = {}
        for c, e in result.errors.items():
            entry = {"t": e["t"], "pred_errors": e["pred_errors"].float(),
                     "cond_errors": torch.cat(log[c]["cond"]) if c in log else torch.empty(0, views)}
            if normalize:
                entry["null_errors"] = torch.cat(log[c]["null"]) if c in log else torch.empty(0, views)
            assert len(entry["cond_errors"]) == len(e["t"]), (len(entry["cond_errors"]), len(e["t"]))
            errors[c] = entry
        scores = candidate_scores(errors, n, weights)
        return {"prompt": prompt, "pred": int(result.pred), "errors": errors, "scores": scores,
                "evaluations": spent[0]}

    return score


def clip_query_scorer(score: Callable, template: str = "{}", fill=FILL) -> Callable[[Query, Image.Image], dict]:
    """score(query, image) for CLIP/OpenCLIP: crop-text similarity of each candidate's square crop."""
    def score_query(query: Query, image: Image.Image) -> dict:
        prompt = template.format(query.expression)
        crops = region_views(image, [box for _, box in query.candidates], "crop", fill)
        sims = score(crops, [prompt])[0].double()  # (K,)
        return {"prompt": prompt, "pred": int(torch.argmax(sims)), "errors": {}, "scores": (-sims).tolist(),
                "evaluations": 0}

    return score_query


# ---------------------------------------------------------------- runs


def make_record(query: Query, scored: dict) -> dict:
    """A query's record: the scores, the chosen box and its IoU with the gold box, the hit."""
    pred = int(scored["pred"])
    cid, box = query.candidates[pred]
    overlap = iou(box, query.gold_box)
    return {"qid": query.qid, "image": query.image, "image_id": query.image_id, "expression": query.expression,
            **scored, "evaluations": int(scored.get("evaluations", 0)), "candidates": [int(c) for c, _ in query.candidates],
            "boxes": [list(b) for _, b in query.candidates], "pred_id": int(cid), "box": list(box),
            "gold": query.gold, "gold_box": list(query.gold_box), "iou": overlap, "hit": overlap > HIT_IOU,
            "category": query.category, "split": query.split}


def open_queries(by_id: dict[str, Query], qids: list[str], position: dict | None = None) -> tuple[list, list]:
    """([(qid, (query, image))] decoded and checked, [(qid, Unreadable)] whose image cannot be decoded);
    `position`: each qid's index for the manifest's list of unreadable images."""
    loaded, bad = [], []
    position = position if position is not None else {q: n for n, q in enumerate(by_id)}
    for q in qids:
        query, n = by_id[q], position[q]
        try:
            image = query.open_image()
        except UnreadableImageError as e:
            bad.append((q, Unreadable(n, e.name, e.found)))
            continue
        check_boxes(query, image)
        loaded.append((q, (query, image)))
    return loaded, bad


def run_queries(queries: Sequence[Query], folder: str | os.PathLike,
                score_query: Callable[[Query, Image.Image], dict], desc: str = "", show_progress: bool = True,
                skip_unreadable: bool = False, unreadable: Sequence[Unreadable] = ()) -> LoopStats:
    """Score the queries without a record in `folder`; save one record each. `stats.records`: every record seen.

    `score_query` returns the record's scores with `pred` and its denoiser `evaluations` (counted into the stats).
    """
    by_id = unique_ids(queries, lambda q: q.qid, "query", "queries", "expression")
    empty = [q for q in queries if not q.expression.strip()]
    if empty:
        warn(f"{len(empty)} expression(s) are empty (first: query {empty[0].qid!r}): they name no region, so their "
             f"picks say nothing of the model; they are scored and counted as the others")
    position = {q: n for n, q in enumerate(by_id)}
    return run_items_once(by_id, folder, RECORD_KEYS, partial(open_queries, by_id, position=position),
                          lambda query, image: make_record(query, score_query(query, image)), "hit", "expressions",
                          desc, show_progress, skip_unreadable, unreadable)


def accuracy_tables(records: Sequence[dict]) -> dict:
    """Accuracy (IoU > 0.5) overall, per split and per category; mean evaluations per expression."""
    n = len(records)
    return {"accuracy": 100.0 * sum(bool(r["hit"]) for r in records) / max(n, 1), "n": n,
            "evaluations_per_expression": sum(int(r.get("evaluations", 0)) for r in records) / max(n, 1),
            "mean_iou": sum(float(r["iou"]) for r in records) / max(n, 1),
            "per_split": accuracy_by(records, "split", "hit"), "per_category": accuracy_by(records, "category", "hit")}


def table_lines(tables: dict) -> list[str]:
    """Markdown tables of the accuracy per split and per category."""
    lines = []
    for key, title in (("per_split", "split"), ("per_category", "category")):
        lines += [f"| {title} | accuracy (IoU > 0.5) | expressions |", "|---|---|---|"]
        lines += [f"| {k} | {v['accuracy']:.2f}% | {v['n']} |" for k, v in tables[key].items()]
        lines.append("")
    return lines[:-1]


def summary_line(folder, tables: dict, stats: LoopStats) -> str:
    """`<run folder>: accuracy X% over N expressions (IoU > 0.5), E evaluations per expression` and the counts."""
    parts = [f"{stats.done} scored now", f"{stats.skipped} already done", f"{stats.repaired} repaired",
             *stats.unreadable_part()]
    return (f"{folder}: accuracy {tables['accuracy']:.2f}% over {tables['n']} expressions (IoU > {HIT_IOU}), "
            f"{tables['evaluations_per_expression']:.0f} evaluations per expression ({', '.join(parts)})")
