"""Result records on disk: atomic writes, resumable run folders, a manifest that guards settings."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path

import torch

from .errors import InputError, StorageError
from .interrupts import critical

MANIFEST = "manifest.json"
# settings that only choose which images a run scores (each record depends on its image alone): a folder grows across
# them, e.g. from a 1,000-image subset to the whole split, and keeps the value of the run that created it
IMAGE_PICKS = ("subset",)
FULL_DISK = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
STORAGE_ERRNOS = FULL_DISK + NOT_WRITABLE  # the OSErrors that are the storage's fault, never a bug
KEPT = "every record already written is intact"

_records_written = 0


def storage_error(e: BaseException, target: str | Path | None, action: str = "writing",
                  left: str = "no file was left behind", flag: str = "--log_dir") -> StorageError | None:
    """The one-line StorageError for a full disk or a folder that cannot be written; None for any other error.

    The only place that turns an errno into a message: `action` and `target` say what was being done
    (`writing <file>`, `creating the folder <folder>`, `writing the claim <file>`, ...; None: unknown), `left`
    what was cleaned up, and the message ends with the fix (free space, make the folder writable, or another `flag`).
    """
    if isinstance(e, StorageError):
        return e
    e = storage_cause(e)
    if e is None:
        return None
    target = Path(target) if target is not None else None
    reason = os.strerror(e.errno)
    if e.errno == errno.ENOSPC:
        cause, fix = "no space left on the device", f"free space (or pass another {flag})"
    elif e.errno in FULL_DISK:
        cause, fix = "disk quota exceeded", f"free space within your quota (or pass another {flag})"
    else:  # read-only file system, or no permission: name the folder to make writable
        folder = writable_folder(target) if target is not None else "the run's folder"
        cause, fix = f"cannot write in {folder}", f"make {folder} writable (or pass another {flag})"
    what = f"{action} {target if target is not None else 'a file of this run'}"
    head = f"{cause} while {what} ({reason})" if e.errno in FULL_DISK else f"{cause} ({reason}) while {what}"
    return StorageError(f"{head}; {left} and {KEPT}: {fix} and re-run the same command to resume")


def storage_cause(e: BaseException | None) -> OSError | None:
    """The storage OSError behind `e`: itself, or the one it was raised from or while handling.

    torch.save on a full disk, for one, raises a RuntimeError while handling the OSError of the write.
    """
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def writable_folder(target: Path) -> Path:
    """The folder whose permissions decide whether `target` can be written: its nearest existing parent."""
    folder = target.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


@contextlib.contextmanager
def storing(target: str | Path, action: str = "writing", left: str = "no file was left behind",
            flag: str = "--log_dir"):
    """Raise a storage failure in the body (full disk, read-only, no permission) as storage_error's StorageError."""
    try:
        yield
    except Exception as e:  # an OSError, or an error raised while handling one (storage_cause)
        error = storage_error(e, target, action, left, flag)
        if error is None or error is e:
            raise
        raise error from e


def make_folder(folder: str | Path, flag: str = "--log_dir") -> Path:
    """mkdir -p, with a storage failure as a StorageError naming the folder."""
    folder = Path(folder)
    with storing(folder, "creating the folder", "nothing was written", flag):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove_quietly(path: str | Path) -> None:
    """Remove a file this process made, on the way out of an error: a failure here must not hide that error."""
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_bytes(path: str | Path, write, flag: str = "--log_dir", exclusive: bool = False) -> bool:
    """Write through `write(fileobj)` into a temporary file beside `path`, then rename over it.

    SIGINT/SIGTERM are held until the rename is done (interrupts.critical), and any failure removes the
    temporary file, so `path` is always either the old file or the complete new one. A full disk or a
    folder that cannot be written is a StorageError that says so (storage_error; `flag` names the fix).
    `exclusive`: only create `path` (hard-linked into place, as exclusive as O_EXCL; a plain rename on a file
    system without hard links); False, writing nothing, when it exists. True when written.
    """
    path = Path(path)
    make_folder(path.parent, flag)
    with critical():
        with storing(path, "writing", flag=flag):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with storing(path, "writing", "the partial file was removed", flag):
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                if exclusive:
                    return _link_whole(tmp, path)
                os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
            except BaseException:
                remove_quietly(tmp)
                raise
    return True


def _link_whole(tmp: str, path: Path) -> bool:
    """Move the finished `tmp` to `path` unless `path` exists (False); a hard link is as exclusive as O_EXCL."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        remove_quietly(tmp)
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
            raise
        os.replace(tmp, path)  # a file system without hard links: not exclusive, as before
        return True
    remove_quietly(tmp)
    return True


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


def write_json(path: str | Path, obj, sort_keys: bool = True, flag: str = "--log_dir", exclusive: bool = False) -> bool:
    """Write `obj` as indented JSON atomically (numpy numbers and arrays as lists); keys sorted unless told.
    `exclusive`: only if `path` does not exist yet (False when it does; atomic_write_bytes)."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n"
    return atomic_write_bytes(path, lambda f: f.write(text.encode()), flag, exclusive)


def index_width(n: int) -> int:
    """Digits of the largest index of an n-item dataset (the reference's zero padding)."""
    return len(str(max(n - 1, 0)))


def record_path(folder: str | Path, idx: int, n: int, ext: str = ".pt") -> Path:
    return Path(folder) / f"{idx:0{index_width(n)}d}{ext}"


WEIGHTS_KEY = "model_weights"  # the numerics entry of loading.weights_fingerprint
IMAGES_KEY = "images"  # the numerics entry of data.datasets.images_digest


def check_manifest(folder: str | Path, settings: dict, info: dict | None = None, numerics: dict | None = None) -> None:
    """Write the run's settings on first use; refuse to continue a folder made with other settings.

    `settings` name the run (runs.py); `numerics` are the other settings that change its numbers (dtype,
    attention kernel, the noise bank's digest, the fingerprint of the model's weights under WEIGHTS_KEY:
    loading.model_numerics; a user's image folder's file list under IMAGES_KEY). A folder written before it recorded `numerics` is checked on what it has (its
    dtype) and gets the rest written in, so that later runs are checked on them too.
    """
    path = Path(folder) / MANIFEST
    settings = json.loads(json.dumps(settings))  # normalise tuples, paths
    numerics = json.loads(json.dumps(numerics or {}))
    if not path.is_file() and write_json(path, {"settings": settings, **({"numerics": numerics} if numerics else {}),
                                               **(info or {})}, exclusive=True):
        return  # created exclusively: of two runs starting this folder at once, the second is checked below
    try:
        manifest = json.loads(path.read_text())
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, where the run's settings file belongs; move it aside, or use another "
                         f"--log_dir") from None
    except PermissionError:
        raise InputError(f"{path} cannot be read (permission denied); it records the settings of the run's records: "
                         f"make it readable, or use another --log_dir") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({first_line(e)}); it records the settings of the run's records: "
                         f"restore it, or move the folder aside to start a new run") from None
    manifest = manifest if isinstance(manifest, dict) else {}
    old = manifest.get("settings", {})
    recorded = dict(manifest.get("numerics") or {})
    if "dtype" in manifest and "dtype" not in recorded:  # older folders kept the dtype beside the settings
        recorded["dtype"] = manifest["dtype"]
    diff = sorted(k for k in set(old) | set(settings)
                  if k not in IMAGE_PICKS and _portable(old.get(k)) != _portable(settings.get(k)))
    if not diff:  # a named setting that differs explains the numbers that follow from it (noise -> its digest)
        diff = sorted(k for k in numerics if k in recorded and recorded[k] != numerics[k])
    if diff == [WEIGHTS_KEY]:
        raise InputError(f"{folder} holds records of other model weights (fingerprint {recorded[WEIGHTS_KEY]}; the "
                         f"model's files now give {numerics[WEIGHTS_KEY]}): they changed since this run began; "
                         f"use another --log_dir or --extra for the new weights, or restore the old ones")
    if diff == [IMAGES_KEY]:
        raise InputError(f"{folder} holds records of other images (image list {recorded[IMAGES_KEY]}; the dataset "
                         f"now gives {numerics[IMAGES_KEY]}): another image folder, or files added, removed, renamed or "
                         f"changed since this run began; records are by index, so use another --log_dir or --extra")
    if diff:
        both = {**old, **recorded}, {**settings, **numerics}
        shown = "; ".join(f"{k}: folder {_short(both[0].get(k))}, command {_short(both[1].get(k))}" for k in diff)
        raise InputError(f"{folder} holds a run made with other settings ({len(diff)} differ: {shown}); "
                         f"re-run with the folder's settings, or use another --log_dir or --extra")
    if any(k not in recorded for k in numerics):
        write_json(path, {**manifest, "numerics": {**recorded, **numerics}})


SHIPPED = re.compile(r"^.*[/\\](diffusion_classifier[/\\]tiny_models[/\\][^/\\]+)[/\\]?$")


def _portable(value):
    """A setting as compared between runs: a shipped model's folder by its place in the package, so that a run
    folder resumes from another checkout or installation of the toolkit."""
    if isinstance(value, str) and (m := SHIPPED.match(value)):
        return m.group(1).replace("\\", "/")
    return value


def local_model(value):
    """A manifest's model setting as a path here: a shipped model's folder from another checkout or installation of
    the toolkit becomes this one's (any other value is returned as it is)."""
    portable = _portable(value)
    if portable is not value and not Path(value).is_dir():
        return str(Path(__file__).resolve().parents[1] / portable)
    return value


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
        if e.errno in FULL_DISK:  # writable, but full: the fix is free space
            raise storage_error(e, folder, "creating a file in", "nothing was written", flag) from e
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
    """The settings of a run folder's manifest, or {} when it has none (a run made without one); InputError for a
    manifest that cannot be read or is not one (its settings say how to read the records: never guessed)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not valid JSON ({first_line(e)}); it records the settings of the run's records: "
                         f"restore it, or remove it to read the records without their settings") from None
    settings = manifest.get("settings", {}) if isinstance(manifest, dict) else None
    named = ("model", "loss", "timestep_weights", "error_space", "dataset")  # names, read as such by the readers
    bad = [k for k in named if not isinstance(settings, dict) or not isinstance(settings.get(k), (str, type(None)))]
    if bad:
        found = (f"a JSON {type(manifest).__name__}" if not isinstance(manifest, dict) else
                 f"settings {_short(settings)}" if not isinstance(settings, dict) else f"{bad[0]} {_short(settings[bad[0]])}")
        raise InputError(f"{path}: expected a run manifest (a JSON object whose 'settings' object names the run's "
                         f"{', '.join(named)}), found {found}")
    return dict(settings)


def claim_run_folder(folder: str | Path, settings: dict, info: dict | None = None, state=None,
                     numerics: dict | None = None) -> None:
    """check_manifest for every process of a run: the main one writes the manifest, the others check it."""
    if state is None or state.is_main_process:
        check_manifest(folder, settings, info, numerics)
    if state is not None:
        state.wait_for_everyone()
        check_manifest(folder, settings, numerics=numerics)


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


CLASSIFICATION_KEYS = ("errors", "pred", "label")  # a record of eval_prob_adaptive.py, eval_prob_dit.py's adaptive mode
MATCHING_KEYS = ("captions", "kind")  # what a compositional or Winoground record has beside them
PER_CLASS_KEYS = ("cls", "data")  # a record of eval_prob_dit.py's per-class mode


def other_scripts_record(rec) -> bool:
    """Whether a record that loads is recognisably another script's (image-text matching, per-class DiT)."""
    return isinstance(rec, dict) and (any(k in rec for k in MATCHING_KEYS) or all(k in rec for k in PER_CLASS_KEYS))


def not_classification(path: Path, rec) -> InputError:
    """The error for a record that loads but is not a classification record (another script's, a foreign file)."""
    found = sorted(map(str, rec)) if isinstance(rec, dict) else type(rec).__name__
    other = (" (an image-text matching record: run_compositional.py and run_winoground.py print their accuracy)"
             if isinstance(rec, dict) and any(k in rec for k in MATCHING_KEYS) else "")
    return InputError(f"{path}: expected a classification record with 'errors', 'pred' and 'label' "
                      f"(eval_prob_adaptive.py, eval_prob_dit.py's adaptive mode), found {found}{other}")


def read_predictions(folder: str | Path, ext: str = ".pt") -> tuple[list[int], list[int], list[Path]]:
    """(preds, labels, unreadable files: cut short, or without a numeric pred and label) of every <index> record in
    a run folder; InputError for another script's record or a folder of records named otherwise."""
    preds, labels, bad = [], [], []
    paths = sorted(Path(folder).glob(f"*{ext}"))
    indexed = [p for p in paths if p.stem.isdigit()]
    if paths and not indexed:
        raise InputError(f"{folder} holds no <index>{ext} records of a classification run (found {paths[0].name}"
                         f"{' ...' if len(paths) > 1 else ''}): a run folder of another script?")
    for path in indexed:
        try:
            rec = load_record(path)
        except Exception:  # noqa: BLE001 - a truncated file is counted, not fatal
            bad.append(path)
            continue
        if other_scripts_record(rec):
            raise not_classification(path, rec)
        try:
            pred, label = (int(rec["pred"]), int(rec["label"])) if isinstance(rec, dict) else (None, None)
        except (TypeError, KeyError, ValueError):  # a partial dict, a label that is no number
            pred = None
        if pred is None:  # ... or no dict at all (a bare tensor)
            bad.append(path)
            continue
        preds.append(pred)
        labels.append(label)
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
