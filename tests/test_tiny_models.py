"""The shipped digits models: offline loading, the fixed split, and a real classification check."""
from __future__ import annotations

import numpy as np
import torch

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.adaptive import adaptive_classify
from diffusion_classifier.datasets import sd_transform
from diffusion_classifier.digits import DigitsDataset, load_digits_arrays, split_indices
from diffusion_classifier.engine import Scorer
from diffusion_classifier.models import DIT_MODELS, SD_VERSIONS, load_class_conditional, load_text_conditional
from diffusion_classifier.noise import make_noise
from diffusion_classifier.prompts import dataset_prompts


def first_of_each_class(n_per_class: int = 1) -> list[int]:
    targets = np.array(DigitsDataset("test").targets)
    return [int(i) for c in range(10) for i in np.flatnonzero(targets == c)[:n_per_class]]


def test_digits_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, test = split_indices(labels)
    train2, test2 = split_indices(labels)
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels) == 1797
    assert len(test) == 359
    assert np.bincount(labels[test]).tolist() == [round(0.2 * n) for n in np.bincount(labels)]
    x_test, y_test = load_digits_arrays("test")
    assert x_test.shape == (359, 8, 8) and x_test.dtype == np.uint8 and x_test.max() == 255
    assert np.array_equal(y_test, labels[test])


def test_shipped_models_load_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sd = load_text_conditional(SD_VERSIONS["tiny"])
    assert sd.autoencoder.vae is None and sd.native_size == 8 and sd.latent_shape(8) == (3, 8, 8) and sd.T == 1000
    assert sd.tokenizer("a photo of the number: '7'.").input_ids[0] == sd.tokenizer.bos_token_id
    dit = load_class_conditional(DIT_MODELS["tiny"])
    assert dit.num_classes == 10 and dit.learned_variance and dit.native_size == 8
    assert dit.id2label[7] == "seven"


def test_text_model_classifies_one_test_image_of_each_digit():
    idx = first_of_each_class()
    ds = DigitsDataset("test")
    clf = DiffusionClassifier.from_pretrained("tiny")
    table = dataset_prompts("digits")
    preds = clf.classify([ds[i][0] for i in idx], table.prompts, to_keep=[5, 1], n_samples=[10, 50], seed=0)
    assert [table.classidx[p.pred] for p in preds] == list(range(10))  # chance: 1e-10
    # other wordings of the digit also work: the model was trained on varied captions
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    preds = clf.classify([ds[i][0] for i in idx], words, to_keep=[1], n_samples=[50], seed=0)
    assert sum(p.pred == c for p, c in zip(preds, range(10))) >= 9


def test_dit_classifies_test_images_of_each_digit():
    idx = first_of_each_class()
    dit = load_class_conditional(DIT_MODELS["tiny"])
    ds = DigitsDataset("test", transform=sd_transform(8))
    latents = dit.encode_images(torch.stack([ds[i][0] for i in idx]))
    scorer = Scorer(dit.denoiser, dit.alphas_cumprod, make_noise(100, (3, 8, 8), 0), batch_size=500)
    res = adaptive_classify(lambda jobs: scorer.evaluate(latents, torch.arange(10), jobs), len(idx), 10, [1], [100])
    assert sum(r.pred == c for r, c in zip(res, range(10))) >= 8  # measured 91% top-1 on the whole split
