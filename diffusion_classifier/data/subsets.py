"""Which images of a dataset a run scores: every index, the indices stored in a file (--subset), or a seeded
stratified choice of so many per class."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingError, warn

INTEGER_TOKEN = re.compile(r"-?[0-9]+(\.0*)?")  # 3, or 3.0 as a float column is written


def _text_indices(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(the integers of a text file (whitespace or commas between them, a JSON list's brackets allowed), None), or
    (None, what it holds instead); (None, None) when it is not UTF-8 text."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return None, None
    for n, line in enumerate(text.splitlines(), start=1):
        bad = [t for t in line.replace(",", " ").replace("[", " ").replace("]", " ").split()
               if not INTEGER_TOKEN.fullmatch(t)]
        if bad:
            return None, f"line {n} holds {bad[0][:40]!r}, not an integer index"
    tokens = text.replace(",", " ").replace("[", " ").replace("]", " ").split()
    if not tokens:
        return None, "the file holds no indices"
    return np.array([int(t.split(".")[0]) for t in tokens], dtype=np.int64), None


def subset_indices(n: int, subset_path: str | Path | None = None) -> list[int]:
    """All indices 0..n-1, or the ones stored in a file: a .npy array (1-D integers, or floats holding integers) or
    a text file of integers (one a line, or separated by spaces or commas), each in 0..n-1; an index given twice is
    scored once."""
    if subset_path is None:
        return list(range(n))
    path = Path(subset_path)
    if not path.is_file():
        raise MissingError(f"subset file not found: {path} (expected a .npy array or a text file of dataset indices)")
    with open(path, "rb") as f:
        is_npy = f.read(6) == b"\x93NUMPY"
    arr, problem = (None, None) if is_npy else _text_indices(path)
    if problem is not None:
        raise InputError(f"{path}: {problem}; expected a 1-D integer array saved with numpy.save, or a text file of "
                         f"integer indices (one a line, or separated by spaces or commas)")
    if arr is None and not is_npy:
        raise InputError(f"{path}: neither a .npy file (numpy's header is missing) nor UTF-8 text; expected a 1-D "
                         f"integer array saved with numpy.save, or a text file of integer indices")
    if arr is None:
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{path}: cannot be read as a .npy array ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); expected a 1-D integer array saved with "
                             f"numpy.save, or a text file of integer indices") from None
    if (isinstance(arr, np.ndarray) and arr.ndim == 1 and np.issubdtype(arr.dtype, np.floating)
            and np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        arr = arr.astype(np.int64)  # indices saved as floats (3.0)
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{path}: expected a 1-D integer array of indices, found shape {arr.shape} dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"{path}: the array holds no indices; expected at least one dataset index")
    if arr.min() < 0 or arr.max() >= n:
        raise InputError(
            f"{path}: indices must lie in 0..{n - 1} for a dataset of {n} images, found {arr.min()}..{arr.max()}"
        )
    indices = list(dict.fromkeys(int(i) for i in arr))  # in the file's order, each once
    if len(indices) < arr.size:
        warn(f"{path}: {arr.size - len(indices)} repeated index(es); each image is scored once")
    return indices


def stratified_indices(labels, per_class: int, seed: int = 0) -> list[int]:
    """per_class indices of every class in `labels`, chosen by a seeded permutation per class; sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out += idx[rng.permutation(len(idx))[:per_class]].tolist()
    return sorted(out)
