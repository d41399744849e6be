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
    """One training set; images are grey, (N, 1, H, W) floats in [-1, 1], turned into RGB for the models.

    With `parts` = 2 a training image is two items of the loaded split side by side (each drawn uniformly, so each
    ordered pair of item classes equally often), and its class is the ordered pair: label = left * n + right with
    n = len(words); captions fill "{a}" and "{b}" with the two items' words instead of "{w}" and "{d}".
    """

    name: str  # the --data value and the evaluation scripts' --dataset
    title: str  # how the model cards name the data
    classnames: tuple[str, ...]  # in label order
    templates: tuple[str, ...]  # caption wordings, "{w}" = the class's word, "{d}" = its label; the first is the prompts CSV's
    words: tuple[str, ...]  # per item class, the word that fills "{w}" (or "{a}", "{b}")
    size: int | tuple[int, int]  # native image side, or (height, width) of a non-square image
    load: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # the items: (N, 1, h, w) in [-1, 1], (N,) int64 labels
    split_note: str  # the card's words on which images are trained on
    folders: dict  # model kind -> model folder name
    parts: int = 1  # items side by side in one training image (1, or 2: ordered pairs)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of a training image."""
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)

    def captions_for(self, label: int) -> list[str]:
        """Every caption wording for one class."""
        if self.parts == 2:
            a, b = divmod(label, len(self.words))
            return [t.format(a=self.words[a], b=self.words[b]) for t in self.templates]
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
        folders={"sd": "digits-sd", "sd-v": "digits-sd-v", "sd-flow": "digits-sd-flow", "dit": "digits-dit",
                 "flow": "tiny-flow"},
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
        folders={"sd": "fashion-sd", "sd-v": "fashion-sd-v", "sd-flow": "fashion-flow-unet", "dit": "fashion-dit",
                 "flow": "fashion-flow"},
    )


# The wordings of fashion-pairs: each names both items, in the order they stand (left, then right); the first is
# the wording of prompts/fashion_pairs_prompts.csv.
PAIR_TEMPLATES = (
    "a {a} to the left of a {b}.", "a {b} to the right of a {a}.", "a {a} on the left and a {b} on the right.",
    "a {b} on the right and a {a} on the left.", "a {a} and a {b}.", "a {a} left, a {b} right",
)


def _fashion_pairs() -> TrainingData:
    single = _fashion()
    names = tuple(f"{a} | {b}" for a in single.classnames for b in single.classnames)  # label = 10 * left + right
    return TrainingData(
        name="fashion_pairs", title="Fashion-MNIST (Zalando) items in pairs", classnames=names,
        templates=PAIR_TEMPLATES, words=single.words, size=(single.size, 2 * single.size), load=_fashion_train,
        split_note=("the original **train split**, every training image two of its items side by side, each drawn "
                    "uniformly and shifted on its own, afresh at every step (the 10,000 test images are never "
                    "trained on)"),
        folders={"sd": "fashion-pairs", "clip": "fashion-pairs-clip"}, parts=2,
    )


_BUILDERS = {"digits": _digits, "fashion_mnist": _fashion, "fashion_pairs": _fashion_pairs}
DATA_NAMES = tuple(_BUILDERS)


def training_data(name: str) -> TrainingData:
    """The TrainingData called `name` (one of DATA_NAMES)."""
    if name not in _BUILDERS:
        raise InputError(f"unknown training data {name!r}; known: {', '.join(_BUILDERS)}")
    return _BUILDERS[name]()


DIGITS = _digits()
