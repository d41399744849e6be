"""Compositional image-text matching (SugarCrepe, ARO, What'sUp, GenEval-style sets, your own): one record per item.

Text retrieval: the captions of one image are its candidates, exactly as prompts are classes in
tasks/classify.py: every caption is scored on the same (t, ε) of the same image, so the differences are
paired and the staged and statistical schedules prune captions. Image retrieval: the images under one
caption are the candidates; errors of different images are not comparable as they stand, so image k's
error is err(caption, x_k) - err("", x_k) on the same (t, ε) (tasks/matching.py), and the same schedules
prune images. CLIP and OpenCLIP score image-caption similarity.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Callable, Sequence

import torch

from ..data.compositional import IMAGE, TEXT, Item
from ..data.images import Unreadable, UnreadableImageError
from ..engine import Jobs, Scorer, cat_conditions
from ..loop import LoopStats
from .candidates import accuracy_by, candidate_scores, run_items_once, unique_ids
from .grounding import candidate_evaluator
from .matching import check_same_inputs

RECORD_KEYS = ("id", "task", "kind", "pred", "label", "correct")


def text_evaluator(scorer: Scorer, latents: torch.Tensor, conds, loss: str = "l2",
                   count: Callable[[int], None] | None = None):
    """`evaluate(jobs)` for the schedules: job (cond = caption k, image, t, noise) -> err(caption k, image)."""
    def evaluate(jobs: Jobs) -> torch.Tensor:
        if count is not None:
            count(len(jobs))
        return scorer.evaluate(latents, conds, jobs, loss)

    return evaluate


def diffusion_item_scorer(encode_images: Callable, encode_prompts: Callable, scorer: Scorer, transform: Callable,
                          schedule_for: Callable[[int], Callable], loss: str = "l2",
                          weights: torch.Tensor | None = None) -> Callable[[Item, list], dict]:
    """score(item, images) -> the record's scores: the schedule of `schedule_for(n_candidates)` over the captions
    (text retrieval, raw errors) or the images (image retrieval, null-normalised errors); scores are mean errors,
    weighted by `weights` (T,) if given (the weights the schedule decides with)."""
    null = encode_prompts([""])

    def score(item: Item, images: list) -> dict:
        n = item.n_candidates
        latents = encode_images(torch.stack([transform(im) for im in images]))  # (n_images, C, H, W)
        spent = [0]
        count = lambda m: spent.__setitem__(0, spent[0] + m)  # noqa: E731
        log: dict = {}
        if item.kind == TEXT:
            conds = encode_prompts(list(item.captions))  # (K, ...)
            evaluate = text_evaluator(scorer, latents, conds, loss, count)
        else:
            conds = cat_conditions([encode_prompts([item.captions[0]]), null])  # (2, ...): the caption, ""
            evaluate = candidate_evaluator(scorer, latents, conds, 1, True, loss, log, count)
        result = schedule_for(n)(evaluate, 1, n)[0]
        errors = {}
        for c, e in result.errors.items():
            entry = {"t": e["t"], "pred_errors": e["pred_errors"].float()}
            if item.kind == IMAGE and c in log:
                entry["cond_errors"] = torch.cat(log[c]["cond"])[:, 0]
                entry["null_errors"] = torch.cat(log[c]["null"])[:, 0]
            errors[c] = entry
        scores = candidate_scores(errors, n, weights)
        return {"pred": int(result.pred), "errors": errors, "scores": scores, "evaluations": spent[0]}

    return score


def clip_item_scorer(score: Callable) -> Callable[[Item, list], dict]:
    """score(item, images) for CLIP/OpenCLIP: scores are minus the image-caption similarities (lower wins)."""
    def score_item(item: Item, images: list) -> dict:
        sims = score(images, list(item.captions)).double()  # (n_captions, n_images)
        sims = sims[:, 0] if item.kind == TEXT else sims[0]
        return {"pred": int(torch.argmax(sims)), "errors": {}, "scores": (-sims).tolist(), "evaluations": 0}

    return score_item


# ---------------------------------------------------------------- runs


def make_record(item: Item, scored: dict) -> dict:
    pred = int(scored["pred"])
    return {"id": item.id, "task": item.task, "kind": item.kind, "captions": list(item.captions),
            "images": [s.name for s in item.images], "label": item.label, **scored,
            "evaluations": int(scored.get("evaluations", 0)), "pred": pred, "correct": pred == item.label}


def open_items(by_id: dict[str, Item], position: dict, ids: list[str]) -> tuple[list, list]:
    """([(id, (item, images))] decoded, [(id, Unreadable)] with an image that cannot be decoded)."""
    loaded, bad = [], []
    for i in ids:
        item = by_id[i]
        try:
            images = [s.open() for s in item.images]
        except UnreadableImageError as e:
            bad.append((i, Unreadable(position[i], e.name, e.found)))
            continue
        loaded.append((i, (item, images)))
    return loaded, bad


def record_matches(by_id: dict[str, Item], path, record: dict) -> None:
    """InputError when a record's captions or label are not its item's now: the data was edited since it was scored,
    and the record would be counted for an item it was not computed on (matching.check_same_inputs)."""
    item = by_id.get(record["id"])
    if item is not None:
        check_same_inputs(path, "item", item.id, record, {"captions": list(item.captions), "label": item.label})


def run_items(items: Sequence[Item], folder: str | os.PathLike, score_item: Callable[[Item, list], dict],
              desc: str = "", show_progress: bool = True, skip_unreadable: bool = False,
              unreadable: Sequence[Unreadable] = ()) -> LoopStats:
    """Score the items without a record in `folder`; save one record each. `stats.records`: every record seen."""
    by_id = unique_ids(items, lambda it: it.id, "item", "items", "item")
    position = {i: n for n, i in enumerate(by_id)}
    return run_items_once(by_id, folder, RECORD_KEYS, partial(open_items, by_id, position),
                          lambda item, images: make_record(item, score_item(item, images)), "correct", "items", desc,
                          show_progress, skip_unreadable, unreadable, check=partial(record_matches, by_id))


def accuracy_tables(records: Sequence[dict]) -> dict:
    """Accuracy over items, per task, and the macro average over tasks; mean evaluations per item."""
    tasks = accuracy_by(records, "task", "correct")
    n = len(records)
    return {"accuracy": 100.0 * sum(bool(r["correct"]) for r in records) / max(n, 1), "n": n,
            "macro_accuracy": sum(t["accuracy"] for t in tasks.values()) / max(len(tasks), 1),
            "evaluations_per_item": sum(int(r.get("evaluations", 0)) for r in records) / max(n, 1),
            "per_task": tasks}


def table_lines(tables: dict) -> list[str]:
    """A markdown table of the accuracy per task and its macro average."""
    lines = ["| task | accuracy | items |", "|---|---|---|"]
    lines += [f"| {k} | {v['accuracy']:.2f}% | {v['n']} |" for k, v in tables["per_task"].items()]
    lines.append(f"| macro average | {tables['macro_accuracy']:.2f}% | {len(tables['per_task'])} tasks |")
    return lines


def summary_line(folder, tables: dict, stats: LoopStats) -> str:
    """`<run folder>: accuracy X% over N items (macro average M% over K tasks, E evaluations per item, counts)`."""
    parts = [f"macro average {tables['macro_accuracy']:.2f}% over {len(tables['per_task'])} tasks",
             f"{tables['evaluations_per_item']:.0f} evaluations per item", f"{stats.done} scored now",
             f"{stats.skipped} already done", f"{stats.repaired} repaired", *stats.unreadable_part()]
    return f"{folder}: accuracy {tables['accuracy']:.2f}% over {tables['n']} items ({', '.join(parts)})"
