"""scikit-learn's handwritten digits (1,797 images, 8x8) with a fixed, seeded train/test split."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

SPLIT_SEED = 0
TEST_FRACTION = 0.2
NATIVE_SIZE = 8
CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION):
    """Stratified split: per class, a seeded permutation; the first round(fraction * n) go to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def read_digits_csv() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images float64 (1797, 8, 8) in 0..16, labels (1797,)).

    Read straight from the CSV that scikit-learn ships, as its load_digits does, so that a run does
    not pay for importing scikit-learn (and SciPy) on start-up; load_digits itself if the file moved.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def load_digits_native(split: str):
    """(images float64 (N, 8, 8) in scikit-learn's 0..16, labels int64 (N,)) of the split ('train' or 'test')."""
    if split not in ("train", "test"):
        raise InputError(f"digits split must be 'train' or 'test', got {split!r}")
    raw, target = read_digits_csv()
    labels = target.astype(np.int64)
    train, test = split_indices(labels)
    idx = train if split == "train" else test
    return raw[idx].astype(np.float64), labels[idx]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Grey levels 0..16 -> 0..255 uint8 (17 levels of the clean set land on the same values as before)."""
    return np.rint(np.clip(images, 0.0, 16.0) * (255.0 / 16.0)).astype(np.uint8)


def load_digits_arrays(split: str, corruption: str | None = None, severity: int | None = None, seed: int = 0):
    """(images uint8 (N, 8, 8) in 0..255, labels int64 (N,)) of the given split ('train' or 'test').

    With a corruption (see diffusion_classifier.data.corruptions) every image is corrupted at `severity`
    in the native 0..16 range, seeded per image index, before the conversion to 0..255.
    """
    images, labels = load_digits_native(split)
    if corruption is not None:
        from .corruptions import corrupt_images

        images = corrupt_images(images, corruption, severity, seed)
    return to_uint8(images), labels


class DigitsDataset(torch.utils.data.Dataset):
    """The digits split served as RGB PIL images with integer labels, like torchvision datasets."""

    classes = CLASSNAMES

    def __init__(self, split: str = "test", transform=None, corruption: str | None = None,
                 severity: int | None = None, seed: int = 0):
        self.images, labels = load_digits_arrays(split, corruption, severity, seed)
        self.corruption, self.severity = corruption, severity
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i], mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]
