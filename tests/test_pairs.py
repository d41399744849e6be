"""fashion-pairs' training data: two items side by side, the ordered pair as the class, captions that name both
in order, the prompts CSV of the 100-way classification, and the benchmark's swap items."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from conftest import REPO, load_script
from diffusion_classifier.training.common import SHIFT_PROB, draw_batch, random_shift
from diffusion_classifier.training.data import PAIR_TEMPLATES, training_data


def constant_items(n_classes: int = 10, per_class: int = 5):
    """Items whose every pixel is a value that names their class: a shift moves only background (-1) in."""
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = (y.float() / 10)[:, None, None, None].expand(-1, 1, 28, 28).clone()
    return x, y


def test_a_pair_batch_puts_its_two_draws_side_by_side_and_labels_the_ordered_pair():
    x, y = constant_items()
    imgs, labels = draw_batch(x, y, 64, torch.Generator().manual_seed(0), parts=2, item_classes=10)
    assert imgs.shape == (64, 1, 28, 56) and labels.shape == (64,)
    left, right = imgs[:, 0, 14, 14], imgs[:, 0, 14, 42]  # centres: never reached by a 1 px shift's background
    assert torch.equal(labels, (left * 10).round().long() * 10 + (right * 10).round().long())
    assert len(set((labels // 10).tolist())) > 5 and len(set((labels % 10).tolist())) > 5  # both sides vary


def test_a_single_item_batch_is_the_draw_every_shipped_model_was_trained_with():
    x, y = constant_items()
    x = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(1))  # items that differ inside
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    imgs, labels = draw_batch(x, y, 16, g1)
    idx = torch.randint(0, len(x), (16,), generator=g2)
    assert torch.equal(imgs, random_shift(x[idx], SHIFT_PROB, g2)) and torch.equal(labels, y[idx])
    assert torch.equal(g1.get_state(), g2.get_state())  # the same draws, in the same order


def test_pair_captions_name_both_items_in_order_and_tokenize_word_by_word(tmp_path):
    from diffusion_classifier.training.common import MAX_LENGTH, build_tokenizer

    pairs = training_data("fashion_pairs")
    assert pairs.num_classes == 100 and pairs.shape == (28, 56) and pairs.parts == 2
    caps = pairs.captions_for(19)  # left: pair of trousers (1), right: ankle boot (9)
    assert caps[0] == "a pair of trousers to the left of a ankle boot."
    assert caps[1] == "a ankle boot to the right of a pair of trousers."
    assert len(caps) == len(PAIR_TEMPLATES) and all("pair of trousers" in c and "ankle boot" in c for c in caps)
    assert pairs.captions_for(91)[0] == "a ankle boot to the left of a pair of trousers."
    tok = build_tokenizer(tmp_path / "tok", pairs)  # raises unless every caption encodes one token a word
    longest = max((c for label in range(100) for c in pairs.captions_for(label)), key=len)
    assert len(tok(longest).input_ids) <= MAX_LENGTH


def test_the_shipped_pair_prompts_are_the_first_wording_of_every_ordered_pair():
    pairs = training_data("fashion_pairs")
    with open(REPO / "prompts" / "fashion_pairs_prompts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["classidx"]) for r in rows] == list(range(100))
    assert [r["prompt"] for r in rows] == [pairs.captions_for(c)[0] for c in range(100)]
    assert [r["classname"] for r in rows] == list(pairs.classnames)


def test_training_script_refuses_a_kind_the_pair_data_has_no_model_for(capsys):
    script = load_script("scripts/train_tiny_models.py")
    with pytest.raises(SystemExit) as e:
        script.parse_args(["--data", "fashion_pairs", "--model", "dit"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--data fashion_pairs trains" in err and "no dit" in err


def test_swap_items_hold_one_true_and_one_swapped_caption_of_the_drawn_pair(tmp_path):
    from PIL import Image

    pairs_lib = load_script("benchmarks/lib/pairs.py")
    words = [f"w{c}" for c in range(10)]
    images = np.repeat(np.arange(10, dtype=np.uint8)[:, None, None] * 20, 28 * 28, 0).reshape(10, 28, 28)
    images = np.concatenate([images, images])
    labels = np.concatenate([np.arange(10), np.arange(10)])
    path = pairs_lib.swap_items(images, labels, words, 30, 0, tmp_path)
    items = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(items) == 90 and {it["task"] for it in items} == set(pairs_lib.TASKS)
    assert {it["label"] for it in items} == {0, 1}  # the true caption sits on either side
    for it in items:
        a, b = it["classes"]
        pixels = np.asarray(Image.open(tmp_path / it["image"]))
        assert pixels.shape == (28, 56) and pixels[0, 0] == 20 * a and pixels[0, 55] == 20 * b
        true, false = it["captions"][it["label"]], it["captions"][1 - it["label"]]
        assert true == f"a w{a} to the left of a w{b}." and false != true
        if it["task"] == "order":
            assert a != b and false == f"a w{b} to the left of a w{a}."
        elif it["task"] == "relation":
            assert a != b and false == f"a w{a} to the right of a w{b}."
        else:  # one side replaced by a third class
            third = [c for c in range(10) if c not in (a, b)]
            assert false in [f"a w{c} to the left of a w{b}." for c in third] + [f"a w{a} to the left of a w{c}." for c in third]


def test_a_pair_folder_and_its_prompts_agree_on_every_class_index(tmp_path):
    from PIL import Image
    from torchvision.datasets import ImageFolder

    pairs_lib = load_script("benchmarks/lib/pairs.py")
    words, names = [f"w{c}" for c in range(10)], [f"N{c}" for c in range(10)]
    images = np.repeat(np.arange(10, dtype=np.uint8)[:, None, None] * 20, 28 * 28, 0).reshape(10, 28, 28)
    labels = np.arange(10)
    classes = [71, 5, 23]  # not in order: the folder and the CSV both sort them
    root = pairs_lib.pair_folder(images, labels, 10, 2, 0, tmp_path / "f", classes)
    csv_path = pairs_lib.write_prompts(tmp_path / "p.csv", words, names, classes)
    folder = ImageFolder(str(root))
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(folder) == 6 and len(rows) == 3
    for (path, idx) in folder.samples:
        pixels = np.asarray(Image.open(path))
        a, b = pixels[0, 0] // 20, pixels[0, 55] // 20
        row = rows[idx]
        assert int(row["classidx"]) == idx and row["prompt"] == f"a w{a} to the left of a w{b}."
        assert row["classname"] == f"N{a} | N{b}"
