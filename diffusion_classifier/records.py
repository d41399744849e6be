"""Result records on disk: atomic writes, resumable run folders, a manifest that guards settings."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

MANIFEST = "manifest.json"


def atomic_write_bytes(path: str | Path, write) -> None:
    """Write through `write(fileobj)` into a temporary file beside `path`, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_record(obj, path: str | Path) -> None:
    """torch.save, atomically."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def load_record(path: str | Path):
    """A record written by save_record; tensors, dicts, lists and numbers only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def index_width(n: int) -> int:
    """Digits of the largest index of an n-item dataset (the reference's zero padding)."""
    return len(str(max(n - 1, 0)))


def record_path(folder: str | Path, idx: int, n: int, ext: str = ".pt") -> Path:
    return Path(folder) / f"{idx:0{index_width(n)}d}{ext}"


def sd_run_name(version: str, n_trials: int, to_keep, n_samples, interpolation: str = "bicubic",
                loss: str = "l2", img_size: int = 512) -> str:
    """Run folder name of eval_prob_adaptive, as the reference builds it."""
    name = (f"v{version}_{n_trials}trials_" + "_".join(map(str, to_keep)) + "keep_"
            + "_".join(map(str, n_samples)) + "samples")
    if interpolation != "bicubic":
        name += f"_{interpolation}"
    if loss != "l2":
        name += f"_{loss}"
    if img_size != 512:
        name += f"_{img_size}"
    return name


def check_manifest(folder: str | Path, settings: dict, info: dict | None = None) -> None:
    """Write the run's settings on first use; refuse to continue a folder made with other settings."""
    path = Path(folder) / MANIFEST
    settings = json.loads(json.dumps(settings))  # normalise tuples, paths
    if path.is_file():
        old = json.loads(path.read_text()).get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
            raise ValueError(f"{folder} holds a run with other settings ({shown}); use another --log_dir or --extra")
        return
    write_json(path, {"settings": settings, **(info or {})})


def read_manifest_settings(folder: str | Path) -> dict:
    """The settings of a run folder's manifest, or {} when it has none (or an unreadable one)."""
    path = Path(folder) / MANIFEST
    try:
        return dict(json.loads(path.read_text()).get("settings", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def claim_run_folder(folder: str | Path, settings: dict, info: dict | None = None, state=None) -> None:
    """check_manifest for every process of a run: the main one writes the manifest, the others check it."""
    if state is None or state.is_main_process:
        check_manifest(folder, settings, info)
    if state is not None:
        state.wait_for_everyone()
        check_manifest(folder, settings)


def environment_info() -> dict:
    """Versions worth keeping beside results."""
    import platform

    info = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("diffusers", "transformers", "accelerate"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


def existing_indices(folder: str | Path, ext: str = ".pt") -> set[int]:
    """Indices of the finished records in a run folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    return {int(p.stem) for p in folder.glob(f"*{ext}") if p.stem.isdigit()}


def shard(indices: list[int], n_workers: int = 1, worker_idx: int = 0) -> list[int]:
    """The reference's sharding: worker w takes indices[w::n_workers]."""
    if n_workers < 1:
        raise ValueError(f"--n_workers must be >= 1, got {n_workers}")
    if not 0 <= worker_idx < n_workers:
        raise ValueError(f"--worker_idx must be in 0..{n_workers - 1} for --n_workers {n_workers}, got {worker_idx}")
    return list(indices)[worker_idx::n_workers]


def read_predictions(folder: str | Path, ext: str = ".pt") -> tuple[list[int], list[int], list[Path]]:
    """(preds, labels, unreadable files) of every record in a run folder."""
    preds, labels, bad = [], [], []
    for path in sorted(Path(folder).glob(f"*{ext}")):
        if not path.stem.isdigit():
            continue
        try:
            rec = load_record(path)
            preds.append(int(rec["pred"]))
            labels.append(int(rec["label"]))
        except Exception:  # noqa: BLE001 - a truncated or foreign file is counted, not fatal
            bad.append(path)
    return preds, labels, bad


def accuracy_summary(preds, labels) -> dict:
    """Top-1 accuracy, mean per-class accuracy and the per-class table, in percent."""
    per_class: dict[int, list[int]] = {}
    for p, y in zip(preds, labels):
        per_class.setdefault(y, [0, 0])
        per_class[y][0] += int(p == y)
        per_class[y][1] += 1
    n = len(labels)
    table = {c: 100.0 * k / m for c, (k, m) in sorted(per_class.items())}
    return {
        "n": n,
        "top1": 100.0 * sum(int(p == y) for p, y in zip(preds, labels)) / n if n else float("nan"),
        "mean_per_class": sum(table.values()) / len(table) if table else float("nan"),
        "per_class": table,
        "per_class_counts": {c: m for c, (_, m) in sorted(per_class.items())},
    }
