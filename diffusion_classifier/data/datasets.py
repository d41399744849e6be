"""Dataset builders (torchvision, image folders, the shipped digits and Fashion-MNIST), their labels and an image
folder's digest. Transforms are in data/transforms.py, subsets in data/subsets.py (both re-exported here).

A builder takes (root, the dataset's own split name, transform) and returns an (image, label) dataset with
labels in the order of its prompts' classidx; data/registry.py names each one with its facts."""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from torchvision import datasets as tvd

from ..errors import InputError, MissingError, warn
from .images import open_rgb, open_upright_rgb
from .integrity import copy_problem
from .prompts import DATA_DIR, DATASET_PROMPTS
from .subsets import stratified_indices, subset_indices
from .transforms import INTERPOLATIONS, ADMCenterCrop, adm_center_crop, dit_transform, sd_transform

__all__ = [  # re-exported: the transforms and subsets are importable from here too
    "INTERPOLATIONS", "ADMCenterCrop", "adm_center_crop", "dit_transform", "sd_transform",
    "stratified_indices", "subset_indices",
]

ROOT_HINT = "pass --dataset_root DIR or set DATASET_ROOT"

_META = json.loads((DATA_DIR / "imagenet_meta.json").read_text(encoding="utf-8"))
IMAGENET_WNIDS: list[str] = _META["wnids"]  # ImageNet-1k class order = sorted wnids


def imagenet_a_indices() -> list[int]:
    """ImageNet-1k indices of the 200 ImageNet-A classes, in ImageNet-A label order."""
    return list(_META["imagenet_a_indices"])


def objectnet_imagenet_indices() -> list[list[int]]:
    """For each of the 113 ObjectNet classes (label order), the ImageNet-1k indices that map to it."""
    mapping = _META["objectnet_imagenet_indices"]
    return [list(mapping[folder]) for folder in DATASET_PROMPTS["objectnet"].classnames]


# ---------------------------------------------------------------- datasets


class RemappedLabels(torch.utils.data.Dataset):
    """Wraps a dataset so that its label k becomes mapping[k]."""

    def __init__(self, dataset, mapping: list[int], classes: list[str]):
        self.dataset = dataset
        self.mapping = list(mapping)
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        img, label = self.dataset[i]
        return img, self.mapping[label]


def _norm(name: str) -> str:
    """Class name reduced to lowercase letters and digits, to compare spellings ('F-16A/B' ~ 'F-16A_B')."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def align_labels(dataset, native_classes: list[str], name: str):
    """Return dataset with labels in the prompts' class order of `name` (matched by class name), remapping if needed."""
    expected = list(DATASET_PROMPTS[name].classnames)
    pos = {_norm(c): i for i, c in enumerate(expected)}
    native = [_norm(c) for c in native_classes]
    if sorted(native) != sorted(pos):
        unknown = [c for c, n in zip(native_classes, native) if n not in pos]
        missing = [c for c in expected if _norm(c) not in native]
        raise InputError(
            f"{name}: the dataset's {len(native_classes)} classes do not match the {len(expected)} prompt classes"
            f" (unmatched: {', '.join(unknown[:5]) or 'none'}; missing: {', '.join(missing[:5]) or 'none'}"
            f"{' ...' if len(missing) > 5 else ''})"
        )
    mapping = [pos[n] for n in native]
    if mapping == list(range(len(mapping))):
        return dataset
    return RemappedLabels(dataset, mapping, expected)


def _not_found(name: str, path: Path, how: str) -> FileNotFoundError:
    """The one-line error for data that is not on disk."""
    return MissingError(f"{name} data not found at {path}: {ROOT_HINT}; {how}")


def _check_copy(name: str, cls, root: Path, how: str, hash_files: bool) -> Exception | None:
    """The error for a copy of `cls` under root that torchvision rejects although its folder is there: MissingError
    naming the files it lacks, or InputError naming the first file that fails its integrity check (integrity.
    copy_problem). None when the folder is missing or nothing is wrong with the files torchvision checks."""
    problem = copy_problem(cls, root, hash_files)
    if problem is None:
        return None
    if problem.lacking:
        return _not_found(name, problem.folder, f"{how} (incomplete copy: no {', '.join(problem.lacking)}, which "
                                                f"torchvision requires whichever the split)")
    return InputError(f"{name} data found at {problem.folder}, but {problem.file} fails its integrity check "
                      f"({problem.found}): replace {problem.folder / problem.file} with an intact copy from the "
                      f"official source, {problem.source}; or delete it and {how}")


def _torchvision(name: str, cls, root: Path, expected: Path, fetch_args: str, make: Callable):
    """Build a torchvision dataset (download=False) from root, turning its 'Dataset not found or corrupted' into
    MissingError for a missing copy and InputError for a damaged one."""
    how = f"torchvision can fetch it with torchvision.datasets.{cls.__name__}(DIR{fetch_args}, download=True)"
    try:
        return make()
    except RuntimeError as e:
        if "not found" in str(e):  # torchvision's words for a missing copy and for one whose md5 differs
            raise _check_copy(name, cls, root, how, hash_files=True) or _not_found(name, expected, how) from None
        damaged = _check_copy(name, cls, root, how, hash_files=False)
        if damaged is None:
            raise
        raise damaged from None
    except FileNotFoundError as e:  # an incomplete copy: a split file or class folder is missing
        raise _not_found(name, expected, f"{how} (incomplete copy: {e.filename or e})") from None
    except (ValueError, AssertionError, LookupError, EOFError) as e:  # a file torchvision only checks exists is cut short
        damaged = _check_copy(name, cls, root, how, hash_files=False)
        if damaged is None:  # one torchvision keeps no checksum of (a Food-101 or Pets split file): say what it read
            found = " ".join(str(e).split())[:200] or "no message"
            damaged = InputError(f"{name} data at {root} cannot be read by torchvision.datasets.{cls.__name__} "
                                 f"({type(e).__name__}: {found}); expected an intact copy in torchvision's layout: "
                                 f"replace the damaged file, or delete the copy and {how}")
        raise damaged from None


class FixedClassFolder(tvd.ImageFolder):
    """ImageFolder whose folder -> label map is given, not the sorted order of the folders present."""

    def __init__(self, root, class_to_idx: dict[str, int], transform=None, ignore_unknown: bool = False):
        self._fixed = dict(class_to_idx)
        self._ignore_unknown = ignore_unknown
        super().__init__(str(root), transform=transform, loader=open_rgb, allow_empty=ignore_unknown)
        if len(self.samples) == 0:
            raise MissingError(f"no images found in the expected class folders under {root}")
        # every known class, in label order, even when a partial copy lacks some folders
        self.classes = sorted(self._fixed, key=self._fixed.get)
        self.class_to_idx = dict(self._fixed)

    def find_classes(self, directory):
        present = sorted(p.name for p in Path(directory).iterdir() if p.is_dir())
        unknown = [c for c in present if c not in self._fixed]
        if unknown and not self._ignore_unknown:
            raise InputError(
                f"{directory}: unexpected class folder(s) {', '.join(unknown[:5])}"
                f"{' ...' if len(unknown) > 5 else ''}; expected folders among the {len(self._fixed)} known classes"
            )
        used = sorted((c for c in present if c in self._fixed), key=lambda c: self._fixed[c])
        if not used:  # an empty folder, or loose images not yet sorted into class folders
            raise FileNotFoundError(f"no folder of the {len(self._fixed)} known classes in {directory}")
        return used, {c: self._fixed[c] for c in used}


def _folder_dataset(name: str, path: Path, how: str, make: Callable):
    """Build a folder-per-class dataset, with the one-line error when the folder is missing or empty."""
    if not path.is_dir():
        raise _not_found(name, path, how)
    try:
        return make()
    except FileNotFoundError as e:
        raise _not_found(name, path, f"{how} ({e})") from None


def build_pets(root: Path, split: str, transform):
    ds = _torchvision("pets", tvd.OxfordIIITPet, root, root / "oxford-iiit-pet", "",
                      lambda: tvd.OxfordIIITPet(str(root), split=split, transform=transform, download=False))
    return align_labels(ds, ds.classes, "pets")


def build_flowers(root: Path, split: str, transform):
    ds = _torchvision("flowers", tvd.Flowers102, root, root / "flowers-102", f", split={split!r}",
                      lambda: tvd.Flowers102(str(root), split=split, transform=transform, download=False))
    # labels are positions in imagelabels.mat, the order of our class list (torchvision spells 3 names differently)
    return ds


def build_stl10(root: Path, split: str, transform):
    ds = _torchvision("stl10", tvd.STL10, root, root / "stl10_binary", f", split={split!r}",
                      lambda: tvd.STL10(str(root), split=split, transform=transform, download=False))
    return align_labels(ds, ds.classes, "stl10")


def build_mnist(root: Path, split: str, transform):
    train = split == "train"
    # labels are the digits themselves, as the prompts' classidx
    return _torchvision("mnist", tvd.MNIST, root, root / "MNIST" / "raw", f", train={train}",
                        lambda: tvd.MNIST(str(root), train=train, transform=transform, download=False))


def build_cifar(name: str, cls):
    def build(root: Path, split: str, transform):
        train = split == "train"
        folder = "cifar-10-batches-py" if cls is tvd.CIFAR10 else "cifar-100-python"
        ds = _torchvision(name, cls, root, root / folder, f", train={train}",
                          lambda: cls(str(root), train=train, transform=transform, download=False))
        return align_labels(ds, ds.classes, name)
    return build


def build_food(root: Path, split: str, transform):
    ds = _torchvision("food", tvd.Food101, root, root / "food-101", f", split={split!r}",
                      lambda: tvd.Food101(str(root), split=split, transform=transform, download=False))
    return align_labels(ds, ds.classes, "food")


def build_caltech101(root: Path, split: str, transform):
    path = root / "caltech101" / "101_ObjectCategories"
    how = "torchvision can fetch it with torchvision.datasets.Caltech101(DIR, download=True)"
    if not path.is_dir():  # checked here: torchvision would create folders under root first
        raise _not_found("caltech101", path, how)
    if not (path / "BACKGROUND_Google").is_dir():  # torchvision fails on a copy without it
        raise _not_found("caltech101", path, f"{how} (incomplete copy: no BACKGROUND_Google/ folder beside the "
                                              f"class folders)")
    ds = _torchvision("caltech101", tvd.Caltech101, root, path, "",
                      lambda: tvd.Caltech101(str(root), target_type="category", transform=transform, download=False))
    return align_labels(ds, ds.categories, "caltech101")


def build_aircraft(root: Path, split: str, transform):
    ds = _torchvision("aircraft", tvd.FGVCAircraft, root, root / "fgvc-aircraft-2013b",
                      f", split={split!r}, annotation_level='variant'",
                      lambda: tvd.FGVCAircraft(str(root), split=split, annotation_level="variant",
                                               transform=transform, download=False))
    return align_labels(ds, ds.classes, "aircraft")


def build_eurosat(root: Path, split: str, transform):
    ds = _torchvision("eurosat", tvd.EuroSAT, root, root / "eurosat" / "2750", "",
                      lambda: tvd.EuroSAT(str(root), transform=transform, download=False))
    return align_labels(ds, ds.classes, "eurosat")


def build_imagenet(root: Path, split: str, transform):
    path = root / "imagenet" / split
    how = f"expected {root / 'imagenet' / split}/<wnid>/*.JPEG (one folder per ImageNet-1k wnid)"
    class_to_idx = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
    return _folder_dataset("imagenet", path, how, lambda: FixedClassFolder(path, class_to_idx, transform))


def build_imagenetv2(root: Path, split: str, transform):
    path = root / "imagenetv2-matched-frequency-format-val"
    how = f"expected {path}/<0..999>/*.jpeg (the ImageNetV2 matched-frequency release)"
    class_to_idx = {str(i): i for i in range(1000)}  # folder name is the ImageNet-1k index
    return _folder_dataset("imagenetv2", path, how, lambda: FixedClassFolder(path, class_to_idx, transform))


def build_imagenet_a(root: Path, split: str, transform):
    path = root / "imagenet-a"
    how = f"expected {path}/<wnid>/*.jpg (the ImageNet-A release, 200 wnid folders)"
    class_to_idx = {IMAGENET_WNIDS[k]: i for i, k in enumerate(_META["imagenet_a_indices"])}
    return _folder_dataset("imagenetA", path, how, lambda: FixedClassFolder(path, class_to_idx, transform))


def build_imagenet_r(root: Path, split: str, transform):
    path = root / "imagenet-r"
    how = f"expected {path}/<wnid>/*.jpg (the ImageNet-R release: 200 ImageNet-1k wnid folders)"
    class_to_idx = {w: i for i, w in enumerate(IMAGENET_WNIDS)}  # labels are ImageNet-1k indices
    return _folder_dataset("imagenetR", path, how, lambda: FixedClassFolder(path, class_to_idx, transform))


def build_imagenet_sketch(root: Path, split: str, transform):
    path = root / "sketch"
    how = f"expected {path}/<wnid>/*.JPEG (the ImageNet-Sketch release: 1000 ImageNet-1k wnid folders)"
    class_to_idx = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
    return _folder_dataset("imagenet_sketch", path, how, lambda: FixedClassFolder(path, class_to_idx, transform))


def build_objectnet(root: Path, split: str, transform):
    path = root / "objectnet" / "images"
    how = f"expected {path}/<objectnet folder>/*.png (the ObjectNet release; the 113 ImageNet-overlap folders are used)"
    class_to_idx = {c: i for i, c in enumerate(DATASET_PROMPTS["objectnet"].classnames)}
    # folders outside the ImageNet overlap are skipped
    return _folder_dataset("objectnet", path, how,
                           lambda: FixedClassFolder(path, class_to_idx, transform, ignore_unknown=True))


def _hidden(path: str, root: str) -> bool:
    """Whether a file under root is hidden or lies in a hidden folder (.DS_Store, ._x.png, .ipynb_checkpoints/...)."""
    return any(part.startswith(".") for part in Path(os.path.relpath(path, root)).parts)


class UserImageFolder(tvd.ImageFolder):
    """A user's ImageFolder: hidden folders and files are neither classes nor images, a class folder may be empty (its
    class keeps its place in the sorted order), and photos are turned upright by their EXIF orientation."""

    def __init__(self, root, transform=None):
        root = str(root)
        real_root = os.path.realpath(root)
        others: list[str] = []  # files left out for their extension (a .gif, notes beside the images)
        seen: set[tuple[str, str]] = set()
        again: list[str] = []  # files reached a second time through a link (a link to a parent folder loops)

        def is_image(path: str) -> bool:
            if _hidden(path, root):
                return False
            if not tvd.folder.has_file_allowed_extension(path, tvd.folder.IMG_EXTENSIONS):
                if os.path.isfile(path):  # not the end of a link loop, which the walk lists as a file
                    others.append(path)
                return False
            key = (Path(os.path.relpath(path, root)).parts[0], os.path.realpath(path))
            if looped(os.path.dirname(path)) or key in seen:
                again.append(path)  # reached through a link back into the folder, or a second link to one file
                return False
            seen.add(key)
            return True

        looped_dirs: dict[str, bool] = {os.path.normpath(root): False}

        def looped(folder: str) -> bool:
            """Whether the walk reached `folder` through a link to a folder inside the root (a loop)."""
            folder = os.path.normpath(folder)
            if folder in looped_dirs:
                return looped_dirs[folder]
            parent = os.path.dirname(folder)
            if parent == folder:
                return False  # above the root: never reached by the walk, which starts there
            looped_dirs[folder] = looped(parent) or (
                os.path.islink(folder) and not os.path.relpath(os.path.realpath(folder), real_root).startswith(".."))
            return looped_dirs[folder]

        super().__init__(root, transform=transform, loader=open_upright_rgb, allow_empty=True, is_valid_file=is_image)
        if len(self.samples) == 0:
            raise MissingError(f"no images ({', '.join(tvd.folder.IMG_EXTENSIONS)}) in the class folders "
                               f"{', '.join(self.classes[:5])}{' ...' if len(self.classes) > 5 else ''}")
        if others:
            kinds = Counter(Path(p).suffix.lower() or "no extension" for p in others)
            warn(f"{root}: {len(others)} file(s) in the class folders are left out, their names not ending in an image "
                 f"extension ({', '.join(tvd.folder.IMG_EXTENSIONS)}): "
                 + ", ".join(f"{n} {k}" for k, n in kinds.most_common(5))
                 + f" (first: {Path(os.path.relpath(others[0], root)).as_posix()})")
        if again:
            warn(f"{root}: {len(again)} path(s) in the class folders reach, through symbolic links, an image already "
                 f"listed or another class's image, and are left out (first: "
                 f"{Path(os.path.relpath(again[0], root)).as_posix()})")

    def find_classes(self, directory):
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"no class folder in {directory}")
        return classes, {c: i for i, c in enumerate(classes)}


SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def _split_folder(root: Path, split: str) -> Path | None:
    """root/split, or its one folder whose name is split in other case (Train/ for --split train); None if none."""
    if (root / split).is_dir():
        return root / split
    same = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == split.lower()] if root.is_dir() else []
    return same[0] if len(same) == 1 else None


def build_imagefolder(root: Path, split: str, transform):
    path = _split_folder(root, split) or root
    how = f"expected {root}/[<split>/]<class>/<image> (class index = sorted folder order)"
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if path == root and root.is_dir() else []
    splits = folders if folders and all(f.lower() in SPLIT_NAMES for f in folders) else []
    if splits:  # DIR/train, DIR/test but no DIR/<split>: split folders must not become classes
        raise MissingError(f"imagefolder split {split!r} not found: {root} has no folder {split}/ but has the split "
                           f"folder(s) {', '.join(splits)}; pass --split {splits[0]}, or {how}")
    return _folder_dataset("imagefolder", path, how, lambda: UserImageFolder(path, transform))


def build_fashion_mnist(root: Path, split: str, transform):
    from .fashion_mnist import load_dataset

    # labels are Zalando's order, the order of the prompts' classidx
    return load_dataset(root, split, transform)


def build_digits(root: Path, split: str, transform):
    from .digits import DigitsDataset

    return DigitsDataset(split, transform=transform)


def dataset_targets(dataset) -> list[int] | None:
    """Every image's label in index order, read without loading images; None when the dataset does not keep them."""
    if isinstance(dataset, RemappedLabels):
        inner = dataset_targets(dataset.dataset)
        return None if inner is None else [dataset.mapping[t] for t in inner]
    # torchvision keeps them as targets (folders, CIFAR, MNIST), labels (STL10), y (Caltech101), _labels (the rest)
    for attr in ("targets", "labels", "y", "_labels"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values) and len(values) == len(dataset):
            return [int(v) for v in values]
    return None


DIGEST_SAMPLED_FILES = 1000  # files whose last bytes go into an image folder's digest
DIGEST_TAIL_BYTES = 4096


def _size(path: str) -> int:
    """The file's size, -1 for a file that cannot be read (a dangling link, left out by --skip_unreadable)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _tail(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(_size(path) - DIGEST_TAIL_BYTES, 0))
            return f.read(DIGEST_TAIL_BYTES)
    except OSError:
        return b""


def images_digest(dataset) -> dict:
    """{'images': digest} of a user's image folder (UserImageFolder), for a run's numerics (records.check_manifest):
    its classes, every file's path under the root, size and label, and the last bytes of up to DIGEST_SAMPLED_FILES
    files spread over the list (two folders of images with the same names and sizes differ there, at a bounded cost).
    Records are by index, so they belong to this list only; a moved or copied folder keeps its digest. {} for other
    datasets."""
    if not isinstance(dataset, UserImageFolder):
        return {}
    import hashlib

    h = hashlib.sha256()
    listed = [[Path(os.path.relpath(f, dataset.root)).as_posix(), _size(f), label] for f, label in dataset.samples]
    h.update(json.dumps([dataset.classes, listed]).encode())
    n = len(dataset.samples)
    for i in sorted({k * n // DIGEST_SAMPLED_FILES for k in range(min(n, DIGEST_SAMPLED_FILES))}):
        h.update(hashlib.sha256(_tail(dataset.samples[i][0])).digest())
    return {"images": h.hexdigest()[:16]}
