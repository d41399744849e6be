"""The one resumable loop of every task: claimed, decoded groups of items, one atomic record each.

    with RecordLoop(folder, path_of, required=KEYS, desc=...) as loop:
        for group in loop.groups(keys, load, size):  # [(key, decoded item), ...]
            ... compute ...
            loop.save(key, record, correct=...)
    print(loop.stats.summary(folder))

The loop skips items whose record is usable, moves broken records aside and recomputes them, claims
each item so that concurrent processes (shards, accelerate ranks, a second launch) never compute the
same one, stops on an image that cannot be decoded (every finished record stays) or, with
`skip_unreadable`, leaves it out and lists it in the manifest, and shows a progress bar. Signals land
between records (records.save_record holds them during a write). A task adds its data reader (`load`)
and its compute-and-save step, nothing else.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .data.images import Unreadable, UnreadableImageError, met_message, names_of
from .errors import InputError
from .claims import RecordFolder
from .records import make_folder, note_unreadable


def launch_state(device: str | None = None):
    """(accelerate's PartialState of this process, its torch device): one process per launched rank.

    The process group is gloo when the run is on the CPU (also with --device cpu on a GPU machine) and
    nccl on GPUs; without --device each process takes the GPU accelerate assigns it, else the CPU.
    """
    from accelerate import PartialState

    from .loading import check_device

    device = check_device(device) if device else None
    on_cpu = device.type == "cpu" if device is not None else not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    return state, device if device is not None else state.device


def shard(indices: Sequence, n_workers: int = 1, worker_idx: int = 0) -> list:
    """The reference's sharding: worker w takes indices[w::n_workers]."""
    if n_workers < 1:
        raise InputError(f"--n_workers must be >= 1, got {n_workers}")
    if not 0 <= worker_idx < n_workers:
        raise InputError(f"--worker_idx must be in 0..{n_workers - 1} for --n_workers {n_workers}, got {worker_idx}")
    return list(indices)[worker_idx::n_workers]


@dataclass
class LoopStats:
    """What a run did: items computed now, found done, counted for accuracy, evaluations spent, healed."""

    done: int = 0  # records computed and saved by this process
    skipped: int = 0  # records found usable before the loop started
    correct: int = 0
    counted: int = 0  # records that count towards the running accuracy
    found_correct: int = 0  # of the records found usable before the loop started (whether counted or not)
    found_counted: int = 0
    found_in_running: tuple[int, int] = (0, 0)  # (correct, counted) of them that count in the running accuracy
    evaluations: int = 0  # denoiser evaluations of this process
    repaired: int = 0  # broken records moved aside and recomputed
    elsewhere: int = 0  # items another process was computing or finished meanwhile
    unreadable: list[Unreadable] = field(default_factory=list)  # items left out (--skip_unreadable)
    records: dict = field(default_factory=dict)  # key -> record, when the loop collects them

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(self.counted, 1)

    def unreadable_part(self) -> list[str]:
        """The final line's note on left-out items ([] when there are none)."""
        return [f"{len(self.unreadable)} unreadable skipped: {names_of(self.unreadable)}"] if self.unreadable else []

    def summary(self, folder, extra_evaluations: int = 0) -> str:
        """The classification line: accuracy over every record of the images asked for (those found done and
        those computed now), counts, denoiser evaluations of this process, repaired records."""
        evaluations = self.evaluations + extra_evaluations
        # every record of the images asked for, found or computed now (--load_stats only sets the running accuracy)
        n = self.counted - self.found_in_running[1] + self.found_counted
        right = self.correct - self.found_in_running[0] + self.found_correct
        acc = f"accuracy {100.0 * right / n:.2f}% over {n} images" if n else "no images counted"
        parts = [f"{self.done} classified now", f"{self.skipped} already done"]
        if self.elsewhere:
            parts.append(f"{self.elsewhere} left to other processes")
        parts.append(f"{evaluations} denoiser evaluations"
                     + (f", {evaluations / self.done:.0f} per image" if self.done else ""))
        parts.append(f"{self.repaired} repaired")
        parts += self.unreadable_part()
        return f"{folder}: {acc} ({', '.join(parts)})"

    def as_dict(self) -> dict:
        """Counts for a script's return value (unreadable items by name)."""
        return {"done": self.done, "skipped": self.skipped, "evaluations": self.evaluations,
                "repaired": self.repaired, "elsewhere": self.elsewhere,
                "unreadable": [b.name for b in self.unreadable]}


class RecordLoop:
    """Resumable iteration over the items of one record folder (see the module docstring).

    path_of(key) -> the record's path; `required`/`check` judge existing records (claims.RecordFolder);
    `manifest_folder` holds the manifest that lists unreadable items (default: `folder`); `unit` names
    the items in messages; `unreadable` are items already found unreadable from their headers.
    """

    def __init__(self, folder: str | Path, path_of: Callable[[Hashable], Path], required=(), check=None,
                 manifest_folder: str | Path | None = None, unit: str = "images", desc: str = "",
                 show_progress: bool = True, skip_unreadable: bool = False,
                 unreadable: Iterable[Unreadable] = (), collect: bool = False,
                 postfix: Callable[[LoopStats], dict] | None = None):
        self.folder = make_folder(folder)  # a full disk or read-only folder: StorageError (records.storage_error)
        self.path_of = path_of
        self.manifest_folder = Path(manifest_folder) if manifest_folder is not None else self.folder
        self.unit, self.desc, self.show_progress, self.postfix = unit, desc, show_progress, postfix
        self.skip_unreadable = skip_unreadable
        self.collect = collect
        self.stats = LoopStats(unreadable=list(unreadable))
        note_unreadable(self.manifest_folder, self.stats.unreadable)
        self.store = RecordFolder(self.folder, required, check)
        self._finished: set = set()  # keys with a usable record, found or saved

    def __enter__(self) -> RecordLoop:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(quiet=exc_type is not None)

    def close(self, quiet: bool = False) -> None:
        """Release every claim this loop holds and settle the counts of the record folder.

        `quiet`: an error (e.g. a StorageError) is on its way out; a claim that cannot be removed then
        does not replace it (it is free once this process ends)."""
        self.stats.repaired = self.store.repaired
        self.stats.elsewhere = self.store.busy + self.store.done_elsewhere
        self.store.close(quiet)

    def _found(self, key, record, count: bool, correct: Callable | None) -> None:
        self._finished.add(key)
        if self.collect:
            self.stats.records[key] = record
        if correct is not None:
            right = int(bool(correct(record)))
            self.stats.found_correct += right  # each key is found once: a found key is never looked up again
            self.stats.found_counted += 1
            if count:
                self.stats.correct += right
                self.stats.counted += 1
                self.stats.found_in_running = (self.stats.found_in_running[0] + right,
                                               self.stats.found_in_running[1] + 1)

    def _left_out(self, bad: list[tuple[Hashable, Unreadable]]) -> None:
        """Items that failed to decode mid-run: stop with one line (finished records stay), or leave them out."""
        if not bad:
            return
        if not self.skip_unreadable:
            first = bad[0][1]
            raise UnreadableImageError(first.name, first.found, met_message(first, self.stats.done, self.unit))
        for key, _ in bad:
            self.store.claims.release(self.path_of(key))
        self.stats.unreadable.extend(b for _, b in bad)
        note_unreadable(self.manifest_folder, [b for _, b in bad])

    def groups(self, keys: Iterable[Hashable], load: Callable[[list], tuple[list, list]], size: int = 1,
               count_existing: bool = False, correct: Callable | None = None,
               wait: bool = False) -> Iterator[list]:
        """Yield claimed groups [(key, item)] of at most `size` items whose record is missing or broken.

        load(keys) -> ([(key, item)] decoded, [(key, Unreadable)] that failed). Records found usable count
        into the accuracy when `count_existing` (by `correct(record)`); with `wait`, the loop ends only
        when every key has a record, waiting for those other processes hold (and taking over a dead
        one's claims), so that a task summarising every record sees them all.
        """
        keys = list(keys)
        todo = []
        for key in keys:
            record = self.store.usable(self.path_of(key))
            if record is None:
                todo.append(key)  # missing, or broken: healed when claimed
                continue
            self.stats.skipped += 1
            self._found(key, record, count_existing, correct)
        left_out: set = set()
        bar = tqdm(total=len(todo), desc=self.desc, disable=not self.show_progress, dynamic_ncols=True)
        pending = iter(todo)
        try:
            while True:
                group = self.store.claim_next(pending, size, self.path_of)
                if not group:
                    if not wait or not (pending := self._wait_for_others(todo, left_out, correct)):
                        break
                    continue
                loaded, bad = load(group)
                self._left_out(bad)
                left_out.update(key for key, _ in bad)
                bar.update(len(bad))
                if not loaded:
                    continue
                yield loaded
                bar.update(len(loaded))
                if self.postfix is not None:
                    bar.set_postfix(**self.postfix(self.stats))
        finally:
            bar.close()

    def _wait_for_others(self, todo: list, left_out: set, correct) -> Iterator | None:
        """The keys still without a record after reading what other processes finished; None when none is left."""
        missing = []
        for key in todo:
            if key in left_out or key in self._finished:
                continue
            record = self.store.usable(self.path_of(key))
            if record is None:
                missing.append(key)
            else:
                self._found(key, record, False, correct)
        if not missing:
            return None
        time.sleep(1.0)
        return iter(missing)

    def save(self, key: Hashable, record, correct: bool | None = None) -> None:
        """Write one item's record atomically and drop its claim; `correct` counts it into the accuracy."""
        self.store.save(record, self.path_of(key))
        self.stats.done += 1
        self._finished.add(key)
        if self.collect:
            self.stats.records[key] = record
        if correct is not None:
            self.stats.correct += int(bool(correct))
            self.stats.counted += 1
