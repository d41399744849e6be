"""One table of dataset facts: how to build each dataset, its splits, its classes, the model classes it maps to.

Adding a dataset is one `DatasetInfo` entry in `DATASETS` (and its prompts, when it ships them). Every
script, the run descriptions and the per-class protocol read these facts here; nothing else tests a
dataset's name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from torchvision import datasets as tvd

from ..errors import InputError, warn
from . import datasets as ds
from .prompts import DATASET_PROMPTS

TRAIN_TEST = {"train": "train", "test": "test"}
WHOLE_SET = {"train": "all", "test": "all"}  # no official split: both names read the whole set


def same_classes(n_classes: int, dataset) -> tuple[list[int], list[int]]:
    """Labels are the model's classes: class k predicts label k."""
    return list(range(n_classes)), list(range(n_classes))


def imagenet_a_classes(n_classes: int, dataset) -> tuple[list[int], list[int]]:
    """ImageNet-A: its 200 ImageNet classes, label k for the k-th."""
    classes = ds.imagenet_a_indices()
    return classes, list(range(len(classes)))


def objectnet_classes(n_classes: int, dataset) -> tuple[list[int], list[int]]:
    """ObjectNet: every ImageNet class mapped to one of its 113 classes predicts that class."""
    pairs = [(c, label) for label, group in enumerate(ds.objectnet_imagenet_indices()) for c in group]
    return [c for c, _ in pairs], [label for _, label in pairs]


def present_classes(n_classes: int, dataset) -> tuple[list[int], list[int]]:
    """Labels that are ImageNet classes (wnid folders): score the classes the copy holds, each its own label."""
    present = sorted({int(t) for t in ds.dataset_targets(dataset)})
    return present, present


@dataclass(frozen=True)
class DatasetInfo:
    """The facts of one dataset.

    build(root, its own split name, transform) -> (image, label) dataset; `splits` maps our split names to
    its own (None: any name, passed through); `classes` names the prompt spec that lists its classes in
    label order (None: the classes of the copy on disk); `prompts_from_copy`: no prompts CSV ships, they
    are written from the copy (scripts/write_prompts.py); `model_classes(n_classes, dataset)` -> (model
    class ids to score, the label each predicts) for a class-conditional model, and `class_conditional`
    offers it to eval_prob_dit.py; `options` are the dataset-specific arguments of get_dataset it takes;
    `group(root, **options)` is its log folder (default: its name); `manifest(dataset)` the manifest
    entries that pick its data.
    """

    name: str
    build: Callable
    splits: Mapping[str, str] | None = field(default_factory=lambda: dict(TRAIN_TEST))
    classes: str | None = ""  # "": the dataset's own name
    prompts_from_copy: bool = False
    model_classes: Callable = same_classes
    class_conditional: bool = False
    options: tuple[str, ...] = ()
    group: Callable[..., str] | None = None
    manifest: Callable[[object], dict] | None = None

    @property
    def class_list(self) -> str | None:
        """The prompt spec whose class list is this dataset's label order, or None (the copy's own classes)."""
        return self.name if self.classes == "" else self.classes


def digits_c_dir(corruption: str, severity: int) -> str:
    """Log folder name of a digits_c set, e.g. digits_c_gaussian_noise_3."""
    return f"digits_c_{corruption}_{severity}"


def hf_dir(root: str | Path) -> str:
    """Log folder name of a local Hugging Face dataset: hf_<its folder or file name>, so two datasets never share runs."""
    path = Path(root).expanduser().resolve()
    return f"hf_{path.stem if path.is_file() else path.name}"


def build_digits_c(root: Path, split: str, transform, corruption: str | None = None, severity: int | None = None):
    from .corruptions import check_corruption
    from .digits import DigitsDataset

    check_corruption(corruption, severity)
    return DigitsDataset(split, transform=transform, corruption=corruption, severity=severity)


def build_hf(root: Path, split: str, transform, image_column: str | None = None, label_column: str | None = None):
    from .hf import load_hf_dataset

    return load_hf_dataset(root, split, transform, image_column, label_column)


def _entries() -> list[DatasetInfo]:
    imagenet_folder = dict(splits=None, class_conditional=True)
    return [
        DatasetInfo("pets", ds.build_pets, {"train": "trainval", "test": "test"}),
        DatasetInfo("flowers", ds.build_flowers, {"train": "train", "val": "val", "test": "test"}),
        DatasetInfo("stl10", ds.build_stl10),
        DatasetInfo("mnist", ds.build_mnist),
        DatasetInfo("cifar10", ds.build_cifar("cifar10", tvd.CIFAR10)),
        DatasetInfo("cifar100", ds.build_cifar("cifar100", tvd.CIFAR100)),
        DatasetInfo("food", ds.build_food),
        DatasetInfo("caltech101", ds.build_caltech101, WHOLE_SET),
        DatasetInfo("aircraft", ds.build_aircraft, {"train": "trainval", "val": "val", "test": "test"}),
        DatasetInfo("eurosat", ds.build_eurosat, WHOLE_SET),
        DatasetInfo("imagenet", ds.build_imagenet, {"train": "train", "val": "val", "test": "val"},
                    class_conditional=True),
        DatasetInfo("imagenetv2", ds.build_imagenetv2, **imagenet_folder),
        DatasetInfo("imagenetA", ds.build_imagenet_a, **imagenet_folder, model_classes=imagenet_a_classes),
        # labels are ImageNet-1k indices of the wnid folders present; its prompts are written from the copy
        DatasetInfo("imagenetR", ds.build_imagenet_r, **imagenet_folder, classes="imagenet", prompts_from_copy=True,
                    model_classes=present_classes),
        DatasetInfo("imagenet_sketch", ds.build_imagenet_sketch, **imagenet_folder, classes="imagenet",
                    model_classes=present_classes),
        DatasetInfo("objectnet", ds.build_objectnet, **imagenet_folder, model_classes=objectnet_classes),
        DatasetInfo("imagefolder", ds.build_imagefolder, None, classes=None, prompts_from_copy=True, class_conditional=True),
        DatasetInfo("digits", ds.build_digits, class_conditional=True),
        DatasetInfo("fashion_mnist", ds.build_fashion_mnist, class_conditional=True),
        DatasetInfo("digits_c", build_digits_c, {"test": "test"}, classes="digits", class_conditional=True,
                    options=("corruption", "severity"),
                    group=lambda root, corruption=None, severity=None: digits_c_dir(corruption, severity)),
        DatasetInfo("hf", build_hf, None, classes=None, prompts_from_copy=True, class_conditional=True,
                    options=("image_column", "label_column"), group=lambda root, **_: hf_dir(root or "."),
                    manifest=lambda dataset: {"hf_columns": [dataset.image_column, dataset.label_column]}),
    ]


DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _entries()}
OPTION_FLAGS = {"corruption": "--corruption", "severity": "--severity", "image_column": "--image_column",
                "label_column": "--label_column"}


def dataset_info(name: str) -> DatasetInfo:
    """The facts of dataset `name`; InputError naming the known ones."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def class_conditional_datasets() -> list[str]:
    """The datasets eval_prob_dit.py offers."""
    return [name for name, info in DATASETS.items() if info.class_conditional]


def get_dataset(name: str, root: str | Path, split: str, transform: Callable | None = None, **options):
    """The (image, label) dataset `name` under root; labels match its prompts' classidx; .classes in label order.

    `options` are the dataset's own arguments (digits_c: corruption and severity; hf: image_column and
    label_column); None values are not given, and another dataset's option is an InputError.
    """
    info = dataset_info(name)
    given = {k: v for k, v in options.items() if v is not None}
    foreign = [k for k in given if k not in info.options]
    if foreign:
        owner = next(i for i in DATASETS.values() if foreign[0] in i.options)
        flags = " and ".join(OPTION_FLAGS[k] for k in owner.options)
        raise InputError(f"{flags} apply to --dataset {owner.name} only, not {name!r}")
    if info.splits is not None:
        if split not in info.splits:
            raise InputError(f"{name} split must be one of {', '.join(info.splits)}, got {split!r}")
        split = info.splits[split]
    dataset = info.build(Path(root).expanduser(), split, transform, **given)
    if not hasattr(dataset, "classes"):  # Caltech101 names them `categories`
        dataset.classes = list(DATASET_PROMPTS[info.class_list].classnames)
    return dataset


def num_classes(name: str, dataset=None) -> int:
    """Number of classes of a dataset: the length of its prompt class list, or of the built copy's classes.

    A dataset whose classes are those of the copy (an image folder, a Hugging Face dataset) needs the built
    `dataset`; a named dataset's count holds even when a partial copy lacks some classes.
    """
    info = dataset_info(name)
    if info.class_list is None:
        if dataset is None:
            raise InputError(f"{name} has no fixed class count; pass the built dataset to count its classes")
        return len(dataset.classes)
    return len(DATASET_PROMPTS[info.class_list].classnames)


def class_names(name: str, dataset) -> list[str]:
    """Class names in label order, as prompts name them: the dataset's prompt class list, else its own classes."""
    info = dataset_info(name)
    if info.class_list is not None:
        return list(DATASET_PROMPTS[info.class_list].classnames)
    return [str(c) for c in getattr(dataset, "classes", [])]


def check_split(name: str, split: str) -> None:
    """The reference's train/test splits for named datasets; any split name for a dataset read from a copy."""
    if dataset_info(name).splits is not None and split not in ("train", "test"):
        raise InputError(f"--split must be train or test for --dataset {name}, got {split!r} "
                         f"(any split name applies to --dataset hf)")


def labels_of(name: str, dataset, indices) -> list[int]:
    """The labels of dataset[indices] (without loading images), or every label of the dataset when it keeps none."""
    targets = ds.dataset_targets(dataset)
    if targets is None:
        return list(range(num_classes(name, dataset)))
    return [targets[i] for i in indices]


def data_settings(name: str, dataset) -> dict:
    """Manifest settings that pick a dataset's data (empty for most, so that older runs resume)."""
    info = dataset_info(name)
    return info.manifest(dataset) if info.manifest else {}


def dataset_group(name: str, root: str | Path | None = None, **options) -> str:
    """The dataset's log folder (before the reference's _<extra>): its name, or what its entry makes of its options."""
    info = dataset_info(name)
    return info.group(root, **options) if info.group else name


WNID = re.compile(r"^n[0-9]{8}$")


def _name_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def match_model_classes(names: Sequence[str], num_model_classes: int,
                        model_labels: Mapping[int, str] | None = None) -> list[int] | None:
    """The model class each of a dataset's classes (`names`, label order) names, or None when no rule names all of
    them, each a different class: the model's class names (id2label; a comma-separated label gives synonyms; case,
    spaces and punctuation ignored), ImageNet wnids (a 1,000-class model), or class indices 0..num_model_classes-1."""
    keys = [_name_key(n) for n in names]
    by_name: dict[str, set[int]] = {}
    for k, label in (model_labels or {}).items():
        for synonym in {label, *str(label).split(",")}:
            if _name_key(synonym):
                by_name.setdefault(_name_key(synonym), set()).add(int(k))
    candidates = []
    if by_name and all(len(by_name.get(k, ())) == 1 for k in keys):
        candidates.append([next(iter(by_name[k])) for k in keys])
    wnids = {w: i for i, w in enumerate(ds.IMAGENET_WNIDS)}
    if num_model_classes == len(wnids) and all(str(n) in wnids for n in names):
        candidates.append([wnids[str(n)] for n in names])
    if all(str(n).isascii() and str(n).isdigit() and int(n) < num_model_classes for n in names):
        candidates.append([int(n) for n in names])
    return next((ids for ids in candidates if len(set(ids)) == len(ids)), None)


def candidate_classes(name: str, n_dataset_classes: int, num_model_classes: int,
                      dataset=None, model_labels: Mapping[int, str] | None = None) -> tuple[list[int], list[int]]:
    """(model class ids to score, the dataset label each one predicts) for a class-conditional model.

    A dataset whose classes are the copy's own (an image folder, a Hugging Face dataset) is matched to the model's
    classes by name (match_model_classes), so that a folder of some of the model's classes, or of all of them named
    by label, scores each image against the classes it holds; classes that name none of the model's are scored
    as model classes 0..N-1 in their sorted order when there are as many as the model has (the reference's
    ImageNet folder), and refused otherwise."""
    if dataset_info(name).class_list is None and dataset is not None:
        names = class_names(name, dataset)
        matched = match_model_classes(names, num_model_classes, model_labels)
        if matched is not None:
            return matched, list(range(len(matched)))
        shown = ", ".join(repr(n) for n in names[:4]) + (" ..." if len(names) > 4 else "")
        example = f" such as {next(iter(model_labels.values()))!r}" if model_labels else ""
        how = (f"name each class (folder) by the model's class name{example} (id2label in model_index.json), by its "
               f"class index 0..{num_model_classes - 1}" + (", or by its ImageNet wnid" if num_model_classes == 1000
                                                              else ""))
        if len(names) != num_model_classes:
            raise InputError(f"the {len(names)} classes of --dataset {name} ({shown}) do not name classes of this "
                             f"{num_model_classes}-class model, so their labels cannot be scored: {how}")
        if model_labels:
            warn(f"the classes of --dataset {name} ({shown}) do not name the model's; class k in their sorted order "
                 f"is scored as model class k ({how} to match them)")
    classes, labels = dataset_info(name).model_classes(n_dataset_classes, dataset)
    if max(classes) >= num_model_classes:
        raise InputError(f"dataset {name} needs model classes up to {max(classes)}, "
                         f"the model has {num_model_classes} classes")
    return list(classes), list(labels)


def scored_classes(name: str, settings: Mapping | None = None) -> list[int] | None:
    """The model classes a per-class run of dataset `name` scores its images against, where they are known without
    the data (a named dataset, or the run's manifest `settings` holding class_map_setting's entry); else None."""
    if settings and settings.get("model_classes"):
        return [int(c) for c in settings["model_classes"]]
    info = dataset_info(name)
    if info.class_list is None or info.model_classes is present_classes:
        return None
    return list(info.model_classes(num_classes(name), None)[0])


def class_map_setting(name: str, classes: Sequence[int]) -> dict:
    """A per-class run's manifest entry for a dataset whose classes are the copy's own and were matched to other
    model classes (candidate_classes): {'model_classes': the model class of each label}; {} otherwise."""
    if dataset_info(name).class_list is None and list(classes) != list(range(len(classes))):
        return {"model_classes": [int(c) for c in classes]}
    return {}


def class_to_label(name: str, settings: Mapping | None = None) -> dict[int, int] | None:
    """Model class -> dataset label where a dataset's labels are not the model's classes (None: identity); a run's
    manifest `settings` holding class_map_setting's entry give its own map."""
    if settings and settings.get("model_classes"):
        return {int(m): k for k, m in enumerate(settings["model_classes"])}
    model_classes = dataset_info(name).model_classes
    if model_classes in (same_classes, present_classes):
        return None
    classes, labels = model_classes(0, None)
    return dict(zip(classes, labels))
