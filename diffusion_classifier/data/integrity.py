"""What is wrong with a torchvision dataset copy on disk that torchvision refuses although its folder is there.

torchvision's own words for a copy it rejects ("Dataset not found or corrupted") do not say which file is
missing or damaged. `copy_problem` reads the file lists the dataset classes keep (CIFAR's and STL-10's split lists
and meta file, Flowers-102's file table, MNIST's resources) and names the first file missing, of the wrong size (where
the format fixes it) or, when asked, of another md5 than torchvision expects; datasets.py turns it into one line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torchvision import datasets as tvd

# Bytes of the files whose size follows from their format (raw uint8 arrays, or IDX with its fixed header), checked
# before any md5 so that a short or long copy is named without hashing gigabytes.
_STL10_IMAGE = 3 * 96 * 96
_MNIST_IMAGE = 28 * 28
_KNOWN_SIZES: dict[type, dict[str, int]] = {
    tvd.STL10: {"train_X.bin": 5000 * _STL10_IMAGE, "train_y.bin": 5000, "test_X.bin": 8000 * _STL10_IMAGE,
                "test_y.bin": 8000, "unlabeled_X.bin": 100000 * _STL10_IMAGE},
    tvd.MNIST: {"train-images-idx3-ubyte": 16 + 60000 * _MNIST_IMAGE, "train-labels-idx1-ubyte": 8 + 60000,
                "t10k-images-idx3-ubyte": 16 + 10000 * _MNIST_IMAGE, "t10k-labels-idx1-ubyte": 8 + 10000},
}


@dataclass(frozen=True)
class CopyProblem:
    """What is wrong with a copy in `folder`: the files it `lacks`, else the damaged `file`, what was `found` (md5 or
    size against what torchvision expects) and its official `source`."""

    folder: Path
    lacking: list[str] = field(default_factory=list)
    file: str | None = None
    found: str | None = None
    source: str | None = None


def checked_files(cls, root: Path) -> tuple[Path, list[tuple[str, str | None, str]]] | None:
    """(folder, [(name, md5 or None, official source)]) of the files torchvision's `cls` checks before it reads a copy
    under root, in the order it checks them (md5 None: it only checks the file exists), read from the class's own
    lists; None for the classes that only check their folders exist (Food101, OxfordIIITPet, FGVCAircraft, ...)."""
    if hasattr(cls, "train_list") and hasattr(cls, "test_list"):  # CIFAR10/100, STL10: md5 of every split's files
        files = [(f, md5, f"the archive {cls.url}") for f, md5 in [*cls.train_list, *cls.test_list]]
        meta = getattr(cls, "meta", None)
        if isinstance(meta, dict) and meta.get("md5"):  # CIFAR checks its meta file next, as it reads it
            files.append((meta["filename"], meta["md5"], f"the archive {cls.url}"))
        return root / cls.base_folder, files
    if issubclass(cls, tvd.Flowers102):  # the image folder exists, md5 of the label and split files
        files = [(cls._file_dict[k][0], cls._file_dict[k][1], f"{cls._download_url_prefix}{cls._file_dict[k][0]}")
                 for k in ("label", "setid")]
        image = cls._file_dict["image"][0]
        return root / "flowers-102", [("jpg", None, f"{cls._download_url_prefix}{image}"), *files]
    if hasattr(cls, "resources") and hasattr(cls, "mirrors"):  # MNIST: the uncompressed IDX files exist
        return root / cls.__name__ / "raw", [(os.path.splitext(f)[0], None, f"{cls.mirrors[0]}{f}, gunzipped")
                                             for f, _ in cls.resources]
    return None


def copy_problem(cls, root: Path, hash_files: bool) -> CopyProblem | None:
    """The files torchvision's `cls` needs that its copy under root lacks, else the first that fails its integrity
    check: a size known from the format, else, with hash_files, the md5 torchvision expects. None when the folder is
    missing, the class keeps no file list, or nothing is wrong with the files it checks."""
    from torchvision.datasets.utils import calculate_md5

    checked = checked_files(cls, root)
    if checked is None or not checked[0].is_dir():
        return None
    folder, files = checked
    lacking = [f for f, _, _ in files if not (folder / f).exists()]
    if lacking:
        return CopyProblem(folder, lacking)
    sizes = _KNOWN_SIZES.get(cls, {})
    for f, _, source in files:
        if f in sizes and (folder / f).stat().st_size != sizes[f]:
            return CopyProblem(folder, file=f, source=source,
                               found=f"expected {sizes[f]} bytes, found {(folder / f).stat().st_size}")
    if hash_files:  # torchvision stops at the first bad file; the smallest first here costs no more than it did
        for f, md5, source in sorted((e for e in files if e[1]), key=lambda e: (folder / e[0]).stat().st_size):
            found = calculate_md5(folder / f)
            if found != md5:
                return CopyProblem(folder, file=f, source=source,
                                   found=f"expected md5 {md5}, found {found}, {(folder / f).stat().st_size} bytes")
    return None
