"""Local Hugging Face datasets (`--dataset hf`): a save_to_disk folder, a folder in the hub's layout, or one file.

Read with the `datasets` library, offline. The image column holds encoded images (an `Image`
feature, or a struct of bytes and path); the label column holds `ClassLabel` ids (class names from
the feature), plain integers, or strings (classes in sorted order, as an image folder's). Plain integers and
strings give the same class list to every split: the classes found over all of the dataset's splits.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError, MissingError, MissingPackageError, warn
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


def _empty(root: Path, split: str, others: list[str]) -> InputError:
    rest = f"; it has rows in {', '.join(others)}" if others else ""
    return InputError(f"split {split!r} of {root} is empty (0 rows){rest}: pass --split with a split that has rows")


def _no_split(root: Path, split: str, names: list[str]) -> InputError:
    return InputError(f"{root} has split(s) {', '.join(names)}, not {split!r}: pass --split with one of them")


def _disk_split(lib, folder: Path):
    """One split saved by save_to_disk, or None when it holds no rows (the library cannot load an empty one)."""
    state = folder / "state.json"
    if state.is_file() and not json.loads(state.read_text(encoding="utf-8")).get("_data_files"):
        return None
    data = lib.load_from_disk(str(folder))
    return data if len(data) else None


def _hub_split(lib, root: Path, name: str):
    """One split of a folder in the hub's layout, or None when it holds no rows."""
    try:
        data = lib.load_dataset(str(root), split=name)
    except ValueError as e:
        if "corresponds to no data" in str(e):
            return None
        raise
    return data if len(data) else None


def _read(root: Path, split: str):
    """(the split `split` of the dataset at root, the dataset's other non-empty splits, whether root is one file).

    A file holds one split, whatever its name; a folder's splits are read one by one, so that an empty split
    is named as such and never stops the others from being read.
    """
    lib = import_datasets()
    if not root.exists():
        raise MissingError(f"hf data not found at {root}: pass --dataset_root PATH; expected {LAYOUTS}")
    try:
        if root.is_file():
            if root.suffix == ".parquet":
                data = lib.load_dataset("parquet", data_files=str(root), split="train")
            elif root.suffix == ".arrow":
                data = lib.Dataset.from_file(str(root))
            else:
                raise InputError(f"{root}: expected a .parquet or .arrow file, or a folder ({LAYOUTS})")
            if not len(data):
                raise InputError(f"{root} is empty (0 rows): pass a file with rows")
            return data, [], True
        if (root / "state.json").is_file():  # one saved Dataset: its own split name is checked by _pick_split
            data = lib.load_from_disk(str(root))
            if not len(data):
                raise InputError(f"{root} is empty (0 rows): pass a dataset with rows")
            return data, [], False
        if (root / "dataset_dict.json").is_file():
            names = list(json.loads((root / "dataset_dict.json").read_text(encoding="utf-8"))["splits"])
            if split not in names:
                raise _no_split(root, split, names)
            splits = {name: _disk_split(lib, root / name) for name in names}
        else:
            names = list(lib.load_dataset_builder(str(root)).config.data_files or {})
            if names and split not in names:
                raise _no_split(root, split, names)
            splits = {name: _hub_split(lib, root, name) for name in names or [split]}
    except InputError:
        raise
    except FileNotFoundError as e:  # also the library's "no data files" errors
        raise MissingError(f"{root}: no dataset found ({_first_line(e)}); expected {LAYOUTS}") from None
    except Exception as e:  # noqa: BLE001 - damaged parquet/arrow files, several configs, ...: one line
        raise InputError(f"{root}: the datasets library cannot read it ({_first_line(e)}); expected {LAYOUTS}") from None
    others = [data for name, data in splits.items() if name != split and data is not None]
    if splits[split] is None:
        raise _empty(root, split, [name for name, data in splits.items() if data is not None])
    return splits[split], others, False


def _pick_split(data, single_file: bool, split: str, root: Path):
    """A Dataset saved alone holds one split: the one asked for, unless it is a file (a file is any split)."""
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


def cell_reader(cell: dict, name: str) -> Callable[[], bytes]:
    """A function reading the encoded bytes of an image cell ({bytes, path}); UnreadableImageError naming it if none."""
    data, path = cell.get("bytes"), cell.get("path")

    def read() -> bytes:
        if data is not None:
            return data
        if path and Path(path).is_file():
            return Path(path).read_bytes()
        raise UnreadableImageError(name, "no image bytes" + (f", and its file {path} does not exist" if path else ""))

    return read


class HFImageDataset(torch.utils.data.Dataset):
    """(transform(RGB image), label) pairs of one split of a Hugging Face dataset; `.classes` in label order."""

    def __init__(self, data, root: Path, where: str, image_column: str | None = None,
                 label_column: str | None = None, transform: Callable | None = None, others: list = ()):
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
        self.classes, self.targets = self._labels(data, data.features[self.label_column], root, others)
        present = set(self.targets)
        self.missing_classes = [c for k, c in enumerate(self.classes) if k not in present]
        if self.missing_classes and others:
            shown = ", ".join(self.missing_classes[:10]) + (" ..." if len(self.missing_classes) > 10 else "")
            warn(f"{where} has no image of {len(self.missing_classes)} of the {len(self.classes)} classes found over "
                 f"all splits: {shown}")

    def _labels(self, data, feature, root: Path, others: list = ()) -> tuple[list[str], list[int]]:
        """(class names in label order, each row's label); classes come from a ClassLabel, else from every split."""
        lib = import_datasets()
        values = data.with_format("arrow")[self.label_column].to_pylist()  # the column alone, without images
        every = values + [v for other in others if self.label_column in other.features
                          for v in other.with_format("arrow")[self.label_column].to_pylist()]
        where = f"{root}: column {self.label_column!r}"
        if isinstance(feature, lib.ClassLabel):
            classes = list(feature.names)
        elif isinstance(feature, lib.Value) and feature.dtype.startswith(("int", "uint")):
            ints = [v for v in every if isinstance(v, int)]
            classes = [str(k) for k in range(max(ints, default=-1) + 1)]
        elif isinstance(feature, lib.Value) and feature.dtype in ("string", "large_string"):
            classes = sorted({v for v in every if isinstance(v, str)})
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
        name = f"{self.where} row {i}" + (f" ({cell['path']})" if cell.get("path") else "")
        return name, cell_reader(cell, name)

    def __getitem__(self, i: int):
        name, read = self.image_source(i)
        img = decode_rgb(read(), name, upright=True)  # a user's photos: as their EXIF orientation shows them
        return (self.transform(img) if self.transform is not None else img), self.targets[i]


def load_hf_dataset(root: str | os.PathLike, split: str, transform: Callable | None = None,
                    image_column: str | None = None, label_column: str | None = None) -> HFImageDataset:
    """One split of the local Hugging Face dataset at root (folder or file), as (image, label) pairs."""
    root = Path(root).expanduser()
    data, others, single_file = _read(root, split)
    data = _pick_split(data, single_file, split, root)
    where = f"{root}" if single_file else f"{root}[{split}]"
    return HFImageDataset(data, root, where, image_column, label_column, transform, others)


def read_split(root: str | os.PathLike, split: str):
    """(one split of the local Hugging Face dataset at root as a `datasets.Dataset`, its name for messages)."""
    root = Path(root).expanduser()
    data, _, single_file = _read(root, split)
    data = _pick_split(data, single_file, split, root)
    return data, (f"{root}" if single_file else f"{root}[{split}]")
