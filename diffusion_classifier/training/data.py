"""The data a tiny model trains on, as a parameter: images, labels, class names, caption wordings and size.

`TRAINING_DATA` maps the `--data` names of scripts/train_tiny_models.py to their `TrainingData`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError


@dataclass(frozen=True)
class TrainingData:
    """One training set; images are grey, (N, 1, size, size) floats in [-1, 1], turned into RGB for the models."""

    name: str  # the --data value and the evaluation scripts' --dataset
    title: str  # how the model cards name the data
    classnames: tuple[str, ...]  # in label order
    templates: tuple[str, ...]  # caption wordings, "{w}" = the class's word, "{d}" = its label; the first is the prompts CSV's
    words: tuple[str, ...]  # per class, the word that fills "{w}"
    size: int  # native image side
    load: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # the train split: (N, 1, H, W) in [-1, 1], (N,) int64
    split_note: str  # the card's words on which images are trained on
    folders: dict  # model kind -> model folder name

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def captions_for(self, label: int) -> list[str]:
        """Every caption wording for one class."""
        return [t.format(d=str(label), w=self.words[label]) for t in self.templates]


def _uint8_to_unit(images) -> torch.Tensor:
    """uint8 (N, H, W) -> (N, 1, H, W) floats in [-1, 1] (x / 127.5 - 1)."""
    return torch.as_tensor(images).float().div(127.5).sub(1.0)[:, None]


def _digits_train() -> tuple[torch.Tensor, torch.Tensor]:
    from ..data.digits import load_digits_arrays

    images, labels = load_digits_arrays("train")
    return _uint8_to_unit(images), torch.from_numpy(labels)


def _fashion_train() -> tuple[torch.Tensor, torch.Tensor]:
    import os

    from ..data.fashion_mnist import load_arrays

    images, labels = load_arrays("train", os.environ.get("DATASET_ROOT"))
    return _uint8_to_unit(images), torch.from_numpy(labels)


def _digits() -> TrainingData:
    from ..data.digits import CLASSNAMES, NATIVE_SIZE

    templates = (
        "a photo of the number: '{d}'.", "a photo of the number: {w}.", "a photo of the number {d}.",
        "a photo of the number {w}.", "a photo of the digit {d}.", "a picture of the digit {w}", "the number {d}",
        "the number {w}", "the digit {d}", "the digit {w}", "a handwritten {d}", "a handwritten {w}", "{d}", "{w}",
    )
    return TrainingData(
        name="digits", title="scikit-learn's handwritten digits", classnames=tuple(CLASSNAMES), templates=templates,
        words=tuple(CLASSNAMES), size=NATIVE_SIZE, load=_digits_train,
        split_note="the project's fixed split (`diffusion_classifier/digits.py`), **train split only**",
        folders={"sd": "digits-sd", "sd-v": "digits-sd-v", "dit": "digits-dit", "flow": "tiny-flow"},
    )


def _fashion() -> TrainingData:
    from ..data.fashion_mnist import CLASSNAMES, NATIVE_SIZE
    from ..data.prompts import DATASET_PROMPTS

    spec = DATASET_PROMPTS["fashion_mnist"]
    words = tuple(spec.prompt_names)
    templates = (
        spec.templates[0].replace("{}", "{w}"), "a photo of a {w}.", "a black and white photo of a {w}.",
        "a product photo of a {w}.", "a low resolution photo of a {w}.", "a picture of a {w}", "a {w}", "the {w}", "{w}",
    )
    return TrainingData(
        name="fashion_mnist", title="Fashion-MNIST (Zalando)", classnames=tuple(CLASSNAMES), templates=templates,
        words=words, size=NATIVE_SIZE, load=_fashion_train,
        split_note="the original split, **train split only** (the 10,000 test images are never trained on)",
        folders={"sd": "fashion-sd", "sd-v": "fashion-sd-v", "dit": "fashion-dit", "flow": "fashion-flow"},
    )


_BUILDERS = {"digits": _digits, "fashion_mnist": _fashion}
DATA_NAMES = tuple(_BUILDERS)


def training_data(name: str) -> TrainingData:
    """The TrainingData called `name` (one of DATA_NAMES)."""
    if name not in _BUILDERS:
        raise InputError(f"unknown training data {name!r}; known: {', '.join(_BUILDERS)}")
    return _BUILDERS[name]()


DIGITS = _digits()
