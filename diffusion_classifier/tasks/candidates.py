"""Items scored one at a time against their candidates (captions, regions): what the tasks of run_refcoco.py and
run_compositional.py share.

A text-conditional model set up for it: the model, its image size and latent shape, the packed Scorer over one
noise bank, the schedule for an item with n candidates (the staged schedule keeps at most n), and the settings
beyond the folder name that change the numbers (records.check_manifest's `numerics`). The run over the one loop
with one record per item, its accuracy grouped by a record field, and the results file of a shard.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Hashable, Sequence

import torch

from ..engine import Scorer
from ..errors import InputError
from ..families import load_model, resolve_model
from ..loading import model_numerics
from ..loop import LoopStats, RecordLoop
from ..noise import noise_bank, noise_digest
from ..packing import resolve_packing
from ..records import write_json
from ..schedules.staged import paired_scores, validate_schedule
from ..schedules.statistical import make_schedule


@dataclass
class CandidateScoring:
    model: object
    img_size: int | tuple[int, int]
    source: str
    scorer: Scorer
    schedule_for: Callable[[int], Callable]  # n_candidates -> classify(evaluate, n_images, n_candidates)
    noise_source: str
    numerics: dict
    weights: torch.Tensor | None = None  # (T,) timestep weights of the schedule and the scores, or None
    weights_digest: str | None = None  # the weights file's digest (run folder name and manifest)


def candidate_scoring(version: str | None, model_path: str | None, device: torch.device, dtype: torch.dtype,
                      attention: str, img_size: int | tuple[int, int] | None, batch_size: int | None, schedule: str,
                      to_keep: Sequence[int], n_samples: Sequence[int], n_trials: int, seed: int, noise_path,
                      statistical: dict, timestep_weights: str | os.PathLike | None = None,
                      loss: str = "l2") -> CandidateScoring:
    """Load the model and build its Scorer and per-item schedules (schedules.statistical.make_schedule); with
    `timestep_weights` (a scripts/fit_timestep_weights.py file; None: the model folder's shipped weights for `loss`,
    weighting.resolve_weights; 'none': plain means) the schedules decide on weighted errors; `loss`
    is the error the scorer will be asked for (the schedules' zone reads log errors as logs)."""
    from ..weighting import resolve_weights

    source = resolve_model(version, model_path)
    model = load_model(source, device, dtype, attention)
    tw, digest = resolve_weights(timestep_weights, source, model.T, loss)
    weights = None if tw is None else tw.weights
    img_size = img_size or model.native_size
    latent_shape = model.latent_shape(img_size)
    batch_size, _ = resolve_packing(device, math.prod(latent_shape), batch_size)
    validate_schedule(to_keep, n_samples, T=model.T)
    _, n_rows = make_schedule(schedule, to_keep, n_samples, n_trials, T=model.T, weights=weights, loss=loss,
                              **statistical)

    @functools.lru_cache(maxsize=None)
    def schedule_for(n_candidates: int) -> Callable:
        keep = [min(k, n_candidates) for k in to_keep]  # an item with fewer candidates keeps them all
        return make_schedule(schedule, keep, n_samples, n_trials, T=model.T, weights=weights, loss=loss,
                             **statistical)[0]

    noise, noise_source = noise_bank(n_rows, latent_shape, seed, noise_path)
    scorer = Scorer(model.denoiser, model.make_objective(latent_shape), noise, device, dtype, batch_size)
    numerics = model_numerics(source, dtype=str(dtype), attention=attention, noise_digest=noise_digest(noise))
    return CandidateScoring(model, img_size, source, scorer, schedule_for, noise_source, numerics, weights, digest)


def candidate_scores(errors: dict, n: int, weights: torch.Tensor | None = None) -> list[float]:
    """Each candidate's paired mean error (schedules.staged.paired_scores: over the leader's samples, weighted by
    w(t) with `weights`, as the schedules rank them); inf for a candidate without samples."""
    return paired_scores(errors, n, weights).tolist()


# ---------------------------------------------------------------- runs


PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def record_file(folder: str | os.PathLike, key: str) -> Path:
    """Where an item's record is stored: <folder>/<key>.pt for a key of at most 100 characters [A-Za-z0-9_.-]; any
    other key keeps its first 80 characters (others become '-') and adds a digest of itself, so that two keys never
    share a file ('a/b' and 'a-b', ids in other scripts) and the name stays within the file system's limit."""
    name = str(key)
    if not PLAIN_NAME.fullmatch(name):
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        name = f"{re.sub(r'[^A-Za-z0-9_.-]', '-', name)[:80]}-{digest}"
    return Path(folder) / f"{name}.pt"


def running_postfix(stats: LoopStats) -> dict:
    """The progress bar's running accuracy and evaluations per item."""
    return {"acc": f"{stats.accuracy:.1f}", "evals": f"{stats.evaluations / max(stats.done, 1):.0f}"}


def run_items_once(by_id: dict[Hashable, object], folder: str | os.PathLike, keys: Sequence[str],
                   load: Callable[[list], tuple[list, list]], score_and_record: Callable[[object, object], dict],
                   correct_key: str, unit: str, desc: str = "", show_progress: bool = True,
                   skip_unreadable: bool = False, unreadable=(), check=None) -> LoopStats:
    """Score the items of `by_id` without a usable record in `folder`, one at a time; save one record each.

    load(ids) -> ([(id, (item, decoded))], [(id, Unreadable)]) as loop.RecordLoop.groups takes it;
    score_and_record(item, decoded) -> the record, with its denoiser `evaluations` (counted into the stats) and
    `correct_key` (the hit that counts into the accuracy). A record must hold `keys`; `check(path, record)` may raise
    for one that is readable but was not made for its item now (claims.RecordFolder). `stats.records`: every record,
    those of items another process sharing the folder was computing waited for (the tables cover every item).
    """
    def problem(record) -> str | None:
        if not isinstance(record, dict) or not set(keys) <= set(record):
            return f"expected a dict with keys {', '.join(keys)}"
        return None

    with RecordLoop(folder, partial(record_file, folder), problem, check, unit=unit, desc=desc, show_progress=show_progress,
                    skip_unreadable=skip_unreadable, unreadable=unreadable, collect=True,
                    postfix=running_postfix) as loop:
        stats = loop.stats
        for [(key, (item, decoded))] in loop.groups(by_id, load, 1, True, lambda r: bool(r[correct_key]), wait=True):
            record = score_and_record(item, decoded)
            stats.evaluations += record["evaluations"]
            loop.save(key, record, correct=record[correct_key])
    return stats


def unique_ids(items: Sequence, key: Callable[[object], Hashable], noun: str, plural: str, per: str) -> dict:
    """{id: item} in order; InputError naming the first two items that share an id ("<noun> ids repeat: <plural> 2
    and 4 (of 9) both have the id ...")."""
    by_id: dict = {}
    for n, it in enumerate(items):
        first = by_id.setdefault(key(it), (n, it))[0]
        if first != n:
            raise InputError(f"{noun} ids repeat: {plural} {first + 1} and {n + 1} (of {len(items)}) both have the id "
                             f"{key(it)!r}; expected one id per {per}")
    return {k: it for k, (_, it) in by_id.items()}


def accuracy_by(records: Sequence[dict], key: str, correct_key: str, missing: str = "-") -> dict:
    """{value of `key` (records without one: `missing`): {accuracy (%), n}} in sorted order."""
    out: dict = {}
    for r in records:
        name = str(r.get(key)) if r.get(key) is not None else missing
        right, n = out.get(name, (0, 0))
        out[name] = (right + int(bool(r[correct_key])), n + 1)
    return {k: {"accuracy": 100.0 * right / n, "n": n} for k, (right, n) in sorted(out.items())}


def results_file(folder: Path, name: str, n_workers: int, worker_idx: int, num_processes: int,
                 process_index: int) -> Path:
    """The run's results JSON: `name`, or one per shard and process when the run is split."""
    if n_workers * num_processes == 1:
        return folder / name
    return folder / f"{Path(name).stem}_{worker_idx}_{process_index}.json"


def report_run(folder: Path, stats: LoopStats, ids: Sequence[Hashable], tables_of: Callable, lines_of: Callable,
               line_of: Callable, results_path: Path, unit: str) -> dict:
    """The end of a run over `ids` (in their order): the task's tables of the records found (`tables_of`),
    printed (`lines_of`) and written to `results_path`, then its final line (`line_of(folder, tables, stats)`);
    InputError when no `unit` was scored because every image was left out as unreadable."""
    records = [stats.records[i] for i in ids if i in stats.records]
    if not records:
        raise InputError(f"no {unit} was scored in {folder}: every image was left out as unreadable")
    tables = tables_of(records)
    for line in lines_of(tables):
        print(line)
    write_json(results_path, tables)
    line = line_of(folder, tables, stats)
    print(line)
    return {"folder": str(folder), **tables, **stats.as_dict(), "line": line}
