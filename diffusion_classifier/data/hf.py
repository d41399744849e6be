"""Local Hugging Face datasets (`--dataset hf`): a save_to_disk folder, a folder in the hub's layout, or one file.

Read with the `datasets` library, offline. The image column holds encoded images (an `Image`
feature, or a struct of bytes and path); the label column holds `ClassLabel` ids (class names from
the feature), plain integers, or strings (classes in sorted order, as an image folder's).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError, MissingError, MissingPackageError
from .images import UnreadableImageError, decode_rgb

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")
LAYOUTS = ("a save_to_disk folder (Dataset or DatasetDict), a folder laid out as the hub stores a dataset "
           "(data/<split>-00000-of-00001.parquet, <split>-*.arrow, ...), or one .parquet or .arrow file")


def import_datasets():
    """The `datasets` package, offline; MissingPackageError naming the extra when it is not installed."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read at import: a local dataset never needs the hub
    try:
        import datasets
    except ImportError:
        raise MissingPackageError("--dataset hf needs the datasets package: pip install datasets "
                                  "(or pip install 'diffusion-classifier[hf]')") from None
    return datasets


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _read(root: Path):
    """The Dataset or DatasetDict stored at root, and whether root is a single file (which holds one split)."""
    lib = import_datasets()
    if not root.exists():
        raise MissingError(f"hf data not found at {root}: pass --dataset_root PATH; expected {LAYOUTS}")
    try:
        if root.is_file():
            if root.suffix == ".parquet":
                return lib.load_dataset("parquet", data_files=str(root), split="train"), True
            if root.suffix == ".arrow":
                return lib.Dataset.from_file(str(root)), True
            raise InputError(f"{root}: expected a .parquet or .arrow file, or a folder ({LAYOUTS})")
        if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
            return lib.load_from_disk(str(root)), False
        return lib.load_dataset(str(root)), False
    except InputError:
        raise
    except FileNotFoundError as e:  # also the library's "no data files" errors
        raise MissingError(f"{root}: no dataset found ({_first_line(e)}); expected {LAYOUTS}") from None
    except Exception as e:  # noqa: BLE001 - damaged parquet/arrow files, several configs, ...: one line
        raise InputError(f"{root}: the datasets library cannot read it ({_first_line(e)}); expected {LAYOUTS}") from None


def _pick_split(data, single_file: bool, split: str, root: Path):
    """The split named `split` of a DatasetDict; a Dataset holds one split (a file, or a folder saved from one)."""
    lib = import_datasets()
    if isinstance(data, lib.DatasetDict):
        if split not in data:
            raise InputError(f"{root} has split(s) {', '.join(data)}, not {split!r}: pass --split with one of them")
        return data[split]
    saved = None if single_file else data.split
    if saved is not None and str(saved) != split:
        raise InputError(f"{root} holds the {saved} split only, not {split!r}: pass --split {saved}")
    return data


def _pick_column(given: str | None, defaults: tuple[str, ...], columns: list[str], flag: str, root: Path) -> str:
    if given is not None:
        if given not in columns:
            raise InputError(f"{root}: no column {given!r} for {flag}; the dataset's columns are {', '.join(columns)}")
        return given
    for name in defaults:
        if name in columns:
            return name
    raise InputError(f"{root}: none of the columns {', '.join(columns)} is named {' or '.join(defaults)}: "
                     f"pass {flag} NAME")


class HFImageDataset(torch.utils.data.Dataset):
    """(transform(RGB image), label) pairs of one split of a Hugging Face dataset; `.classes` in label order."""

    def __init__(self, data, root: Path, where: str, image_column: str | None = None,
                 label_column: str | None = None, transform: Callable | None = None):
        lib = import_datasets()
        columns = list(data.features)
        self.image_column = _pick_column(image_column, IMAGE_COLUMNS, columns, "--image_column", root)
        self.label_column = _pick_column(label_column, LABEL_COLUMNS, columns, "--label_column", root)
        feature = data.features[self.image_column]
        if isinstance(feature, lib.Image):
            data = data.cast_column(self.image_column, lib.Image(decode=False))  # bytes and path: we decode
        elif not (isinstance(feature, dict) and "bytes" in feature):
            raise InputError(f"{root}: column {self.image_column!r} holds {feature}, not images; expected an Image "
                             f"feature (or bytes and path): pass --image_column NAME")
        self.data = data.select_columns([self.image_column, self.label_column]).with_format(None)
        self.where = where
        self.transform = transform
        self.classes, self.targets = self._labels(data, data.features[self.label_column], root)

    def _labels(self, data, feature, root: Path) -> tuple[list[str], list[int]]:
        lib = import_datasets()
        values = data.with_format("arrow")[self.label_column].to_pylist()  # the column alone, without images
        where = f"{root}: column {self.label_column!r}"
        if isinstance(feature, lib.ClassLabel):
            classes = list(feature.names)
        elif isinstance(feature, lib.Value) and feature.dtype.startswith(("int", "uint")):
            classes = [str(k) for k in range(max((v for v in values if v is not None), default=-1) + 1)]
        elif isinstance(feature, lib.Value) and feature.dtype in ("string", "large_string"):
            classes = sorted({v for v in values if v is not None})
            index = {c: k for k, c in enumerate(classes)}
            values = [None if v is None else index[v] for v in values]
        else:
            raise InputError(f"{where} holds {feature}; expected one class per row (a ClassLabel, an integer or a "
                             f"string): pass --label_column NAME")
        unlabelled = [i for i, v in enumerate(values) if v is None or not 0 <= v < max(len(classes), 1)]
        if unlabelled:
            raise InputError(f"{where}: {len(unlabelled)} of {len(values)} rows have no class label (e.g. row "
                             f"{unlabelled[0]}: {values[unlabelled[0]]!r}); an unlabelled split cannot be scored: "
                             f"use a labelled split")
        return classes, [int(v) for v in values]

    def __len__(self) -> int:
        return len(self.targets)

    def image_source(self, i: int) -> tuple[str, Callable[[], bytes]]:
        """(name of row i for messages, a function reading its encoded image bytes)."""
        cell = self.data[int(i)][self.image_column] or {}
        path, data = cell.get("path"), cell.get("bytes")
        name = f"{self.where} row {i}" + (f" ({path})" if path else "")

        def read() -> bytes:
            if data is not None:
                return data
            if path and Path(path).is_file():
                return Path(path).read_bytes()
            raise UnreadableImageError(name, "no image bytes" + (f", and its file {path} does not exist" if path else ""))

        return name, read

    def __getitem__(self, i: int):
        name, read = self.image_source(i)
        img = decode_rgb(read(), name)
        return (self.transform(img) if self.transform is not None else img), self.targets[i]


def load_hf_dataset(root: str | os.PathLike, split: str, transform: Callable | None = None,
                    image_column: str | None = None, label_column: str | None = None) -> HFImageDataset:
    """One split of the local Hugging Face dataset at root (folder or file), as (image, label) pairs."""
    root = Path(root).expanduser()
    data, single_file = _read(root)
    data = _pick_split(data, single_file, split, root)
    where = f"{root}" if single_file else f"{root}[{split}]"
    return HFImageDataset(data, root, where, image_column, label_column, transform)
