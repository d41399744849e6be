"""Result records on disk: atomic writes, resumable run folders, a manifest that guards settings."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import torch

from .errors import InputError, StorageError
from .interrupts import critical

MANIFEST = "manifest.json"
FULL_DISK = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))

_records_written = 0


def atomic_write_bytes(path: str | Path, write) -> None:
    """Write through `write(fileobj)` into a temporary file beside `path`, then rename over it.

    SIGINT/SIGTERM are held until the rename is done (interrupts.critical), and any failure removes the
    temporary file, so `path` is always either the old file or the complete new one. A full disk is a
    StorageError that says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with critical():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno in FULL_DISK:
                raise StorageError(
                    f"no space left on the device while writing {path} ({os.strerror(e.errno)}); the partial file "
                    f"was removed and every record already written is intact: free space (or pass another --log_dir) "
                    f"and re-run the same command to resume") from e
            raise


def save_record(obj, path: str | Path) -> None:
    """torch.save, atomically; counts the records this process has written (records_written)."""
    global _records_written
    with critical():  # a signal held during the write is raised after the count, not between write and count
        atomic_write_bytes(path, lambda f: torch.save(obj, f))
        _records_written += 1


def records_written() -> int:
    """How many records save_record has written in this process."""
    return _records_written


def load_record(path: str | Path):
    """A record written by save_record; tensors, dicts, lists and numbers only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: str | Path, obj, sort_keys: bool = True) -> None:
    """Write `obj` as indented JSON atomically (numpy numbers and arrays as lists); keys sorted unless told."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def index_width(n: int) -> int:
    """Digits of the largest index of an n-item dataset (the reference's zero padding)."""
    return len(str(max(n - 1, 0)))


def record_path(folder: str | Path, idx: int, n: int, ext: str = ".pt") -> Path:
    return Path(folder) / f"{idx:0{index_width(n)}d}{ext}"


def check_manifest(folder: str | Path, settings: dict, info: dict | None = None) -> None:
    """Write the run's settings on first use; refuse to continue a folder made with other settings."""
    path = Path(folder) / MANIFEST
    settings = json.loads(json.dumps(settings))  # normalise tuples, paths
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{path} is not valid JSON ({first_line(e)}); it records the settings of the run's records: "
                             f"restore it, or move the folder aside to start a new run") from None
        old = manifest.get("settings", {}) if isinstance(manifest, dict) else {}
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            shown = "; ".join(f"{k}: folder {_short(old.get(k))}, command {_short(settings.get(k))}" for k in diff)
            raise InputError(f"{folder} holds a run made with other settings ({len(diff)} differ: {shown}); "
                             f"re-run with the folder's settings, or use another --log_dir or --extra")
        return
    write_json(path, {"settings": settings, **(info or {})})


def _short(value, limit: int = 80) -> str:
    """A setting's value for a one-line message, shortened in the middle when long (prompt lists)."""
    text = json.dumps(value)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]} ({len(text)} chars)"


def check_writable(folder: str | Path, flag: str = "--log_dir") -> Path:
    """Create `folder` if needed and prove a file can be written in it; InputError saying why not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise InputError(f"{flag} {folder} is not a writable folder ({reason}: {e.filename or folder}); "
                         f"pass a folder you can write to with {flag}") from None
    return folder


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Check that a file can be written at `path` (its folder exists and is writable); InputError naming the fix."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; expected the path of a file to write: pass a file name")
    if not parent.exists():
        raise InputError(f"{flag} {path}: its folder {parent} does not exist; create it (mkdir -p {parent}) "
                         f"or pass another {flag}")
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: {parent} is not a folder; pass another {flag}")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".write_check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot write in {parent} ({e.strerror or type(e).__name__}); pass another "
                         f"{flag} in a folder you can write to") from None
    return path


def note_unreadable(folder: str | Path, entries) -> None:
    """Add unreadable images (images.Unreadable: index, name, found) to the manifest's `unreadable` table."""
    entries = list(entries)
    path = Path(folder) / MANIFEST
    if not entries or not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # an unreadable manifest is reported by check_manifest; this list is informative only
    table = dict(manifest.get("unreadable") or {})
    table.update({str(e.index): f"{e.name}: {e.found}" for e in entries})
    manifest["unreadable"] = dict(sorted(table.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1))
    write_json(path, manifest)


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


# ---------------------------------------------------------------- messages


def first_line(e: BaseException, limit: int = 160) -> str:
    """'Type: first line of the message', shortened: an exception inside a one-line message."""
    text = str(e).strip().splitlines()
    line = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_failure(e: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words."""
    import pickle

    if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
        return "it holds Python objects other than tensors, numbers, lists and dicts"
    if isinstance(e, RuntimeError) and ("zip archive" in str(e) or "central directory" in str(e)):
        return "it is truncated or not a torch.save file (its zip archive cannot be read)"
    return f"it is not a torch.save file ({first_line(e)})"
