"""Dataset runs: classify every image of a shard, one atomic record per image, resumable."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .engine import Jobs, Scorer
from .images import Unreadable, UnreadableImageError, load_items, met_message, names_of
from .records import RecordFolder, note_unreadable, record_path

RECORD_KEYS = ("errors", "pred", "label")


def launch_state(device: str | None = None):
    """(accelerate's PartialState of this process, its torch device): one process per launched rank.

    The process group is gloo when the run is on the CPU (also with --device cpu on a GPU machine) and
    nccl on GPUs; without --device each process takes the GPU accelerate assigns it, else the CPU.
    """
    from accelerate import PartialState

    on_cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu")
    state = PartialState(cpu=on_cpu)
    return state, torch.device(device) if device else state.device


@dataclass
class RunStats:
    """Counts of a run: images classified now, skipped as done, and the running accuracy."""

    done: int = 0
    skipped: int = 0
    correct: int = 0
    counted: int = 0
    evaluations: int = 0
    repaired: int = 0  # broken records moved aside and recomputed
    elsewhere: int = 0  # images another process was computing or finished meanwhile
    unreadable: list[Unreadable] = field(default_factory=list)  # images left out (--skip_unreadable)

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(self.counted, 1)

    def summary(self, folder, extra_evaluations: int = 0) -> str:
        """The final line: accuracy, counts, denoiser evaluations of this process, repaired records."""
        evaluations = self.evaluations + extra_evaluations
        acc = f"accuracy {self.accuracy:.2f}% over {self.counted} images" if self.counted else "no images counted"
        parts = [f"{self.done} classified now", f"{self.skipped} already done"]
        if self.elsewhere:
            parts.append(f"{self.elsewhere} left to other processes")
        parts.append(f"{evaluations} denoiser evaluations"
                     + (f", {evaluations / self.done:.0f} per image" if self.done else ""))
        parts.append(f"{self.repaired} repaired")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable skipped: {names_of(self.unreadable)}")
        return f"{folder}: {acc} ({', '.join(parts)})"


def skip_or_stop(bad: list[Unreadable], skip_unreadable: bool, folder: Path, finished: int, records: RecordFolder,
                 path_of, stats_list: list[Unreadable], unit: str = "images") -> None:
    """Images that failed to decode mid-run: stop with one line (finished records stay), or leave them out.

    Left-out images lose their claim, join `stats_list` and the manifest's `unreadable` table.
    """
    if not bad:
        return
    if not skip_unreadable:
        raise UnreadableImageError(bad[0].name, bad[0].found, met_message(bad[0], finished, unit))
    for b in bad:
        records.claims.release(path_of(b.index))
    stats_list.extend(bad)
    note_unreadable(folder, bad)


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
) -> RunStats:
    """Classify dataset[indices] that have no record yet in `folder`; write {errors, pred, label} each.

    `classify(evaluate, n_images, n_candidates)` runs a schedule (adaptive_classify or the statistical
    one) given `evaluate(jobs) -> errors`; the record's pred is candidate_class[winning candidate].
    An image that cannot be decoded stops the run (UnreadableImageError; finished records stay) or, with
    `skip_unreadable`, is left out and listed; `unreadable` are those already found from their headers.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    stats = RunStats(unreadable=list(unreadable))
    note_unreadable(folder, unreadable)
    todo = []
    with RecordFolder(folder, RECORD_KEYS) as records:
        for i in indices:
            rec = records.usable(record_path(folder, i, n))
            if rec is None:
                todo.append(i)  # missing, or broken: healed when claimed
                continue
            stats.skipped += 1
            if load_stats:
                stats.correct += int(rec["pred"] == rec["label"])
                stats.counted += 1
        bar = tqdm(total=len(todo), desc=desc, disable=not show_progress, dynamic_ncols=True)
        pending = iter(todo)
        path_of = lambda i: record_path(folder, i, n)  # noqa: E731
        while group := records.claim_next(pending, image_batch, path_of):
            loaded, bad = load_items(dataset, group)
            skip_or_stop(bad, skip_unreadable, folder, stats.done, records, path_of, stats.unreadable)
            bar.update(len(bad))
            if not loaded:
                continue
            group = [i for i, _ in loaded]
            items = [item for _, item in loaded]
            latents = encode_images(torch.stack([x for x, _ in items]))

            def evaluate(jobs: Jobs) -> torch.Tensor:
                stats.evaluations += len(jobs)
                return scorer.evaluate(latents, conds, jobs, loss)

            results = classify(evaluate, len(group), len(conds))
            for i, (_, label), r in zip(group, items, results):
                pred = int(candidate_class[r.pred])
                records.save({"errors": r.errors, "pred": pred, "label": int(label)}, record_path(folder, i, n))
                stats.done += 1
                stats.correct += int(pred == int(label))
                stats.counted += 1
            bar.update(len(group))
            bar.set_postfix(acc=f"{stats.accuracy:.1f}", evals_per_img=f"{stats.evaluations / max(stats.done, 1):.0f}")
        bar.close()
        stats.repaired = records.repaired
        stats.elsewhere = records.busy + records.done_elsewhere
    return stats
