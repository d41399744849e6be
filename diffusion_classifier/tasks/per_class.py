"""Classification over class labels (DiT): the reference's per-class protocol and null normalisation.

Per-class mode (the reference's `eval_prob_dit.py`): one run scores ONE class against every image
over `range(t_interval//2, T, t_interval)` × n_trials and stores the raw numbers per image in
`<run>/<cls>/<idx>.pt`; `print_dit_acc` then takes, per image, the class with the lowest mean.
Adaptive mode scores all classes of an image in one run with the staged pruning of the SD path.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from ..engine import Batch, Jobs, Scorer, denoising_error
from ..errors import InputError, MissingError
from ..noise import periodic_noise_rows
from ..data.images import load_items
from ..loop import LoopStats, RecordLoop
from ..records import first_line, load_record, record_path
from ..vb import NoiseSchedule, split_learned_variance, vb_terms

# What a per-class record stores per (t, trial); the flag that selects each (none: l2).
SAVE_MODES = {"l2": None, "vb": "--save_vb", "spatial": "--spatial", "eps": "--save_eps",
              "eps_and_var": "--save_eps_and_var"}
VB_COLUMNS = ("mse", "l1", "vb", "nll")
METRICS = ("L2", "L1", "VLB", "L2+VLB")


# ---------------------------------------------------------------- per-class jobs


def save_mode(spatial: bool = False, save_eps: bool = False, save_eps_and_var: bool = False,
              save_vb: bool = False) -> str:
    """The record kind chosen by the reference's four flags (at most one may be set)."""
    chosen = [m for m, on in (("spatial", spatial), ("eps", save_eps), ("eps_and_var", save_eps_and_var),
                              ("vb", save_vb)) if on]
    if len(chosen) > 1:
        raise InputError(f"give at most one of --spatial, --save_eps, --save_eps_and_var, --save_vb; got "
                         f"{', '.join(SAVE_MODES[m] for m in chosen)}")
    return chosen[0] if chosen else "l2"


def per_class_jobs(n_images: int, timesteps: Sequence[int], n_trials: int, batch_size: int,
                   randomize_noise: bool, cond: int = 0) -> Jobs:
    """Jobs of n_images images against one condition: per image, each t repeated n_trials times (t-major)."""
    if n_trials < 1:
        raise InputError(f"--n_trials must be >= 1, got {n_trials}")
    ts = torch.as_tensor(list(timesteps), dtype=torch.long).repeat_interleave(n_trials)  # (n_t * n_trials,)
    noise = periodic_noise_rows(len(ts), batch_size, randomize_noise)
    image = torch.arange(n_images, dtype=torch.long).repeat_interleave(len(ts))
    return Jobs.build(image, torch.full_like(image, cond), ts.repeat(n_images), noise.repeat(n_images))


# ---------------------------------------------------------------- reducers


def schedule_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> NoiseSchedule:
    """NoiseSchedule whose betas are 1 - ᾱ_t / ᾱ_{t-1} (ᾱ_{-1} = 1), in float64."""
    ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
    prev = torch.cat([ac.new_ones(1), ac[:-1]])
    return NoiseSchedule.from_betas(1.0 - ac / prev)


def l2_map(b: Batch) -> torch.Tensor:
    """Per-pixel squared error (in the objective's error space) averaged over channels: (B, H, W)."""
    return (b.pred - b.target).pow(2).mean(1)


def vb_reducer(schedule: NoiseSchedule) -> Callable[[Batch], torch.Tensor]:
    """Reducer returning mse, l1, KL (bits/dim) and decoder NLL (bits/dim) per job: (B, 4) float64."""

    def reduce(b: Batch) -> torch.Tensor:
        eps_hat, v = split_learned_variance(b.out, b.eps.shape[1])
        terms = vb_terms(schedule, b.x0, b.x_t, b.t, b.eps, eps_hat, v)
        return torch.stack([terms[k] for k in VB_COLUMNS], 1)

    return reduce


def make_reducer(mode: str, schedule: NoiseSchedule | None = None,
                 store_dtype: torch.dtype = torch.float32) -> Callable[[Batch], torch.Tensor]:
    """The per-job reducer of a record kind; ε̂ and raw outputs are kept in `store_dtype` (the model's)."""
    if mode == "l2":
        return lambda b: denoising_error(b.target, b.pred, "l2")  # (B,), in the objective's error space
    if mode == "spatial":
        return l2_map  # (B, H, W)
    if mode == "eps":
        return lambda b: b.pred.to(store_dtype)  # (B, C, H, W): ε̂ (a v or x0 output converted)
    if mode == "eps_and_var":
        return lambda b: b.out.to(store_dtype)  # (B, C', H, W)
    if mode == "vb":
        assert schedule is not None, "the vb reducer needs the diffusion schedule"
        return vb_reducer(schedule)  # (B, 4)
    raise InputError(f"record kind must be one of {', '.join(SAVE_MODES)}, got {mode!r}")


# ---------------------------------------------------------------- unconditional normalisation


class NullNormalizedScorer:
    """Wraps a Scorer: each job's error minus the null class's error on the same (image, t, ε).

    All candidates of an image share the same (t, ε) in both schedules, so the subtracted term is common
    to every alive candidate and pruning and predictions do not change; the stored errors become
    differences to the unconditional prediction (a per-sample log-likelihood-ratio estimate).
    """

    def __init__(self, scorer: Scorer, null_class: int):
        self.scorer = scorer
        self.null_class = null_class
        self.extra_evaluations = 0

    def evaluate(self, latents: torch.Tensor, conds: torch.Tensor, jobs: Jobs, reduce="l2", progress=None):
        if len(jobs) == 0:
            return torch.empty(0)
        key = torch.stack([jobs.image, jobs.t, jobs.noise], 1)  # (J, 3)
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
        null = Jobs(uniq[:, 0], torch.full((len(uniq),), len(conds), dtype=torch.long), uniq[:, 1], uniq[:, 2])
        all_conds = torch.cat([conds, torch.tensor([self.null_class], dtype=conds.dtype)])
        out = self.scorer.evaluate(latents, all_conds, Jobs.cat([jobs, null]), reduce, progress)  # one batched pass
        self.extra_evaluations += len(uniq)
        return out[: len(jobs)] - out[len(jobs):][inverse]


# ---------------------------------------------------------------- reading per-class folders


def record_data(record) -> tuple[str, torch.Tensor]:
    """(kind, data) of a per-class record; a bare tensor (reference layout) is l2 [n_t, n_trials] or vb [n_t, n_trials, 4]."""
    if isinstance(record, dict):
        if "kind" not in record or "data" not in record:
            raise InputError(f"expected a per-class record with keys kind and data, found keys {', '.join(map(str, record))}")
        return record["kind"], record["data"]
    if isinstance(record, torch.Tensor) and record.dim() == 2:
        return "l2", record
    if isinstance(record, torch.Tensor) and record.dim() == 3 and record.shape[-1] == len(VB_COLUMNS):
        return "vb", record
    found = tuple(record.shape) if isinstance(record, torch.Tensor) else type(record).__name__
    raise InputError(f"expected a per-class record (dict, or tensor [n_t, n_trials] / [n_t, n_trials, 4]), found {found}")


def record_scores(kind: str, data: torch.Tensor) -> dict[str, float]:
    """Mean over (t, trial) of a record's numbers, per metric: L2 always, L1/VLB/L2+VLB for vb records."""
    if kind in ("l2", "spatial"):
        return {"L2": float(data.double().mean())}  # the spatial map's mean is the l2 error
    if kind == "vb":
        m = data.double().flatten(0, -2).mean(0)  # (4,) mse, l1, vb, nll
        return {"L2": float(m[0]), "L1": float(m[1]), "VLB": float(m[2]), "L2+VLB": float(m[0] + m[2])}
    raise InputError(f"records of kind {kind!r} hold no errors to classify with; run with the default or --save_vb")


def class_folders(folder: str | Path) -> dict[int, Path]:
    """The class subfolders of a per-class run folder, by class id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingError(f"run folder {folder} does not exist")
    found = {int(p.name): p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()}
    if not found:
        raise MissingError(f"run folder {folder} has no class folders (expected <folder>/<cls>/<idx>.pt)")
    return dict(sorted(found.items()))


def load_per_class_scores(folder: str | Path, unreadable: list[Path] | None = None,
                          ) -> tuple[list[int], list[int], dict[str, torch.Tensor], dict[int, int]]:
    """(classes, images every class folder has, metric -> scores (n_images, n_classes), labels found in records).

    With `unreadable` (a list), records that cannot be loaded are appended to it and their images left
    out; without it they raise.
    """
    folders = class_folders(folder)
    files = {c: {int(p.stem): p for p in f.glob("*.pt") if p.stem.isdigit()} for c, f in folders.items()}
    common = sorted(set.intersection(*(set(v) for v in files.values())))
    classes = list(folders)
    loaded: dict[tuple[int, int], object] = {}
    for c in classes:
        for idx in common:
            try:
                record = load_record(files[c][idx])
                loaded[c, idx] = record_data(record), record
            except Exception:  # noqa: BLE001 - truncated copies, foreign files
                if unreadable is None:
                    raise
                unreadable.append(files[c][idx])
                continue
            if isinstance(record, dict) and "cls" in record and int(record["cls"]) != c:
                raise InputError(f"{files[c][idx]}: {folders[c].name} is the folder of class {c} but the record is of "
                                 f"class {int(record['cls'])}; each class's records go to <run>/<cls>/: move the "
                                 f"misplaced record to its class folder")
    bad_images = {int(p.stem) for p in unreadable or []}
    common = [i for i in common if i not in bad_images]
    tables: dict[str, torch.Tensor] = {}
    labels: dict[int, int] = {}
    for j, c in enumerate(classes):
        for i, idx in enumerate(common):
            data, record = loaded[c, idx]
            if isinstance(record, dict) and "label" in record:
                label = int(record["label"])
                if labels.setdefault(idx, label) != label:  # one image, one label: else a record of another run
                    first = next(files[k][idx] for k in classes
                                 if isinstance(r := loaded[k, idx][1], dict) and int(r.get("label", -1)) == labels[idx])
                    raise InputError(f"{files[c][idx]} gives image {idx} label {label}, {first} label {labels[idx]}: "
                                     f"one of them is a record of another run or image; move it aside and re-run its class")
            scores = record_scores(*data)
            if not tables and i == 0 and j == 0:
                tables = {m: torch.full((len(common), len(classes)), float("nan"), dtype=torch.float64) for m in scores}
            for m in [m for m in tables if m not in scores]:  # a metric counts only where every record has it
                del tables[m]
            for m, table in tables.items():
                table[i, j] = scores[m]
    return classes, common, tables, labels


def per_class_accuracy(scores: dict[str, torch.Tensor], classes: Sequence[int], labels: Sequence[int],
                       class_label: dict[int, int] | None = None) -> dict[str, float]:
    """Accuracy (%) per metric: the lowest-scoring class wins; its dataset label (-1 if it has none) must match."""
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    mapped = torch.tensor([c if class_label is None else class_label.get(c, -1) for c in classes], dtype=torch.long)
    out = {}
    for m in METRICS:
        if m in scores and len(labels):
            pred = mapped[scores[m].argmin(1)]  # (n_images,)
            out[m] = 100.0 * float((pred == labels).double().mean())
    return out


# ---------------------------------------------------------------- per-class dataset runs


def run_per_class(
    dataset,
    indices: Sequence[int],
    folder: str | Path,
    encode_images: Callable[[torch.Tensor], torch.Tensor],
    scorer: Scorer,
    cls: int,
    timesteps: Sequence[int],
    n_trials: int,
    randomize_noise: bool,
    kind: str,
    reduce: Callable[[Batch], torch.Tensor],
    image_batch: int = 1,
    desc: str = "",
    show_progress: bool = True,
    skip_unreadable: bool = False,
    unreadable: Sequence = (),
) -> LoopStats:
    """Score class `cls` on dataset[indices] without a record in `folder` (<run>/<cls>); one record per image.

    A record is {kind, data [n_t, n_trials, ...], t (n_t,), cls, label}; unreadable images as in
    tasks.classify.run_dataset (listed in the run folder's manifest).
    """
    folder = Path(folder)

    def same_class(path: Path, record) -> None:
        if isinstance(record, dict) and "cls" in record and int(record["cls"]) != int(cls):
            raise InputError(f"{folder} is the folder of class {cls} but {path.name} holds a record of class "
                             f"{int(record['cls'])}; each class writes to <run>/<cls>/: move the misplaced records "
                             f"to their class folder")

    def problem(record) -> str | None:
        try:
            record_data(record)
        except (KeyError, ValueError) as e:
            return f"not a per-class record ({first_line(e)})"
        return None

    n_t = len(timesteps)
    t_saved = torch.as_tensor(list(timesteps), dtype=torch.long)
    conds = torch.tensor([cls], dtype=torch.long)
    path_of = partial(record_path, folder, n=len(dataset))
    with RecordLoop(folder, path_of, problem, same_class, manifest_folder=folder.parent, desc=desc,
                    show_progress=show_progress, skip_unreadable=skip_unreadable, unreadable=unreadable) as loop:
        for group in loop.groups(indices, partial(load_items, dataset), image_batch):
            latents = encode_images(torch.stack([x for _, (x, _) in group]))  # (G, C, H, W)
            jobs = per_class_jobs(len(group), timesteps, n_trials, scorer.batch_size, randomize_noise)
            out = scorer.evaluate(latents, conds, jobs, reduce)  # (G * n_t * n_trials, ...)
            out = out.view(len(group), n_t, n_trials, *out.shape[1:])
            loop.stats.evaluations += len(jobs)
            for k, (i, (_, label)) in enumerate(group):
                loop.save(i, {"kind": kind, "data": out[k].clone(), "t": t_saved, "cls": int(cls), "label": int(label)})
    return loop.stats


def summary_line(folder: str | Path, stats: LoopStats, per_image: int) -> str:
    """The final line of a per-class run: images scored now and before, evaluations, repaired and left out."""
    parts = [f"{stats.evaluations} denoiser evaluations", f"{per_image} per image", f"{stats.repaired} repaired",
             *stats.unreadable_part()]
    return (f"{folder}: {stats.done} images scored now, {stats.skipped} already done"
            + (f", {stats.elsewhere} left to other processes" if stats.elsewhere else "")
            + f" ({', '.join(parts)})")
