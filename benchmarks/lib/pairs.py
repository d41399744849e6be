"""Pairs of Fashion-MNIST items side by side (28x56, as fashion-pairs is trained on), written as the files the
toolkit reads: a jsonl of caption swaps for run_compositional.py and an ImageFolder with a 100-row prompts CSV
for eval_prob_adaptive.py.

Every item of a swap set is one image `[left | right]` and two captions, the true one and a swap of it:
- order: `a A to the left of a B.` against `a B to the left of a A.` (A != B);
- object: one of the two classes replaced by a third class C (not A or B), on a random side;
- relation: `a A to the left of a B.` against `a A to the right of a B.` (A != B).
The true caption's position among the two is random, so a scorer that prefers a position gains nothing.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

TASKS = ("order", "object", "relation")


def left_of(a: str, b: str) -> str:
    return f"a {a} to the left of a {b}."


def right_of(a: str, b: str) -> str:
    return f"a {a} to the right of a {b}."


def pair_image(left: np.ndarray, right: np.ndarray) -> Image.Image:
    """Two (28, 28) uint8 items as one (28, 56) greyscale image."""
    return Image.fromarray(np.concatenate([left, right], axis=1), mode="L")


def _pick(rng: np.random.Generator, by_class: list[np.ndarray], c: int) -> int:
    return int(rng.choice(by_class[c]))


def swap_items(images: np.ndarray, labels: np.ndarray, words: list[str], per_task: int, seed: int,
               folder: Path) -> Path:
    """Write folder/images/<task>_<i>.png and folder/items.jsonl (one entry per item, with its "task"); the
    classes of each item are drawn uniformly (seeded), its images uniformly among the split's items of them."""
    rng = np.random.default_rng(seed)
    n_classes = len(words)
    by_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for task in TASKS:
        for i in range(per_task):
            a, b = rng.choice(n_classes, size=2, replace=task == "object")
            true = left_of(words[a], words[b])
            if task == "order":
                false = left_of(words[b], words[a])
            elif task == "relation":
                false = right_of(words[a], words[b])
            else:
                c = int(rng.choice([k for k in range(n_classes) if k not in (a, b)]))
                false = left_of(words[c], words[b]) if rng.random() < 0.5 else left_of(words[a], words[c])
            name = f"images/{task}_{i}.png"
            pair_image(images[_pick(rng, by_class, a)], images[_pick(rng, by_class, b)]).save(folder / name)
            label = int(rng.integers(2))
            captions = [false, false]
            captions[label] = true
            lines.append({"image": name, "captions": captions, "label": label, "task": task,
                          "classes": [int(a), int(b)]})
    path = folder / f"{folder.name}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def fashion_words() -> tuple[list[str], list[str]]:
    """(prompt words, class names) of the ten Fashion-MNIST classes: `t-shirt`, ... and `T-shirt/top`, ..."""
    from diffusion_classifier.data.fashion_mnist import CLASSNAMES
    from diffusion_classifier.data.prompts import DATASET_PROMPTS

    return list(DATASET_PROMPTS["fashion_mnist"].prompt_names), list(CLASSNAMES)


def pair_classes(words: list[str], classnames: list[str]) -> list[tuple[str, str]]:
    """(prompt, class name) of the ordered pair classes, label = left * n + right."""
    n = len(words)
    return [(left_of(words[a], words[b]), f"{classnames[a]} | {classnames[b]}") for a in range(n) for b in range(n)]


def write_prompts(path: Path, words: list[str], classnames: list[str], classes: list[int] | None = None) -> Path:
    """The prompts CSV (prompt,classname,classidx) of the pair classes (all, or `classes`, renumbered 0..k-1 in
    increasing order: the order of the ImageFolder pair_folder writes for them)."""
    rows = pair_classes(words, classnames)
    classes = list(range(len(rows))) if classes is None else sorted(classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "classname", "classidx"])
        for i, c in enumerate(classes):
            w.writerow([rows[c][0], rows[c][1], i])
    return path


def pair_folder(images: np.ndarray, labels: np.ndarray, n_classes: int, per_class: int, seed: int, root: Path,
                classes: list[int] | None = None) -> Path:
    """An ImageFolder root/<two-digit pair class>/<i>.png with `per_class` images of every pair class (or of
    `classes`): the folder names sort in label order, so ImageFolder's class index is the label's rank."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    for pair in range(n_classes * n_classes) if classes is None else sorted(classes):
        a, b = divmod(pair, n_classes)
        (root / f"{pair:02d}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pair_image(images[_pick(rng, by_class, a)], images[_pick(rng, by_class, b)]).save(root / f"{pair:02d}" / f"{i}.png")
    return root
