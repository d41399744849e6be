"""Classification runs: every image of a shard scored against every candidate by a schedule, one record each."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..data.images import Unreadable, load_items
from ..engine import Jobs, Scorer
from ..loop import LoopStats, RecordLoop
from ..records import record_path

RECORD_KEYS = ("errors", "pred", "label")


def is_correct(record: dict) -> bool:
    """Whether a classification record's prediction is its label."""
    return record["pred"] == record["label"]


def running_postfix(stats: LoopStats) -> dict:
    """The progress bar's running accuracy and evaluations per image."""
    return {"acc": f"{stats.accuracy:.1f}", "evals_per_img": f"{stats.evaluations / max(stats.done, 1):.0f}"}


def run_dataset(
    dataset,
    indices: Sequence[int],
    folder: str | Path,
    encode_images: Callable[[torch.Tensor], torch.Tensor],
    scorer: Scorer,
    conds: torch.Tensor,
    candidate_class: Sequence[int],
    classify: Callable,
    loss: str = "l2",
    image_batch: int = 1,
    load_stats: bool = False,
    desc: str = "",
    show_progress: bool = True,
    skip_unreadable: bool = False,
    unreadable: Sequence[Unreadable] = (),
) -> LoopStats:
    """Classify dataset[indices] that have no record yet in `folder`; write {errors, pred, label} each.

    `classify(evaluate, n_images, n_candidates)` runs a schedule (adaptive_classify or the statistical
    one) given `evaluate(jobs) -> errors`; the record's pred is candidate_class[winning candidate].
    Unreadable images stop the run or, with `skip_unreadable`, are left out (loop.RecordLoop);
    `unreadable` are those already found from their headers. `load_stats` counts finished records
    into the accuracy.
    """
    folder = Path(folder)
    path_of = partial(record_path, folder, n=len(dataset))
    with RecordLoop(folder, path_of, RECORD_KEYS, desc=desc, show_progress=show_progress,
                    skip_unreadable=skip_unreadable, unreadable=unreadable, postfix=running_postfix) as loop:
        stats = loop.stats
        for group in loop.groups(indices, partial(load_items, dataset), image_batch, load_stats, is_correct):
            latents = encode_images(torch.stack([x for _, (x, _) in group]))  # (G, C, H, W)

            def evaluate(jobs: Jobs) -> torch.Tensor:
                stats.evaluations += len(jobs)
                return scorer.evaluate(latents, conds, jobs, loss)

            results = classify(evaluate, len(group), len(conds))
            for (i, (_, label)), r in zip(group, results):
                pred = int(candidate_class[r.pred])
                loop.save(i, {"errors": r.errors, "pred": pred, "label": int(label)}, correct=pred == int(label))
    return stats
