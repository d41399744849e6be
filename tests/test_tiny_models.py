"""The shipped digits models: offline loading, the fixed split, and a real classification check."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.schedules.staged import adaptive_classify
from diffusion_classifier.data.digits import DigitsDataset, load_digits_arrays, split_indices
from diffusion_classifier.data.transforms import sd_transform
from diffusion_classifier.engine import Scorer
from diffusion_classifier.errors import InputError
from diffusion_classifier.families import SD_VERSIONS
from diffusion_classifier.families.dit import DIT_MODELS, load_class_conditional
from diffusion_classifier.families.sd import load_text_conditional
from diffusion_classifier.noise import make_noise
from diffusion_classifier.data.prompts import dataset_prompts
from diffusion_classifier.training.common import train_images, validation_split
from diffusion_classifier.training.dit import dit_accuracy, train_dit


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


def test_python_api_runs_the_statistical_schedule_with_its_bound_settings():
    idx = first_of_each_class()
    ds = DigitsDataset("test")
    clf = DiffusionClassifier.from_pretrained("tiny")
    table = dataset_prompts("digits")
    images = [ds[i][0] for i in idx]
    common = dict(to_keep=[1], n_samples=[100], seed=0, schedule="statistical", delta=0.05, variance="stratified")
    preds = clf.classify(images, table.prompts, spending="decaying", epsilon=0.01, **common)
    assert sum(table.classidx[p.pred] == c for p, c in zip(preds, range(10))) >= 9
    spent = [sum(len(e["t"]) for e in p.errors.values()) for p in preds]
    assert all(n < len(table.prompts) * 100 for n in spent)  # pruned: fewer than every prompt at 100 timesteps
    plain = clf.classify(images, table.prompts, **common)
    assert sum(sum(len(e["t"]) for e in p.errors.values()) for p in plain) >= sum(spent)  # the zone only stops sooner
    with pytest.raises(InputError, match="--delta"):
        clf.classify(images[:1], table.prompts, to_keep=[1], n_samples=[20], schedule="statistical", spending="decaying")


def test_dit_classifies_test_images_of_each_digit():
    idx = first_of_each_class(2)
    dit = load_class_conditional(DIT_MODELS["tiny"])
    ds = DigitsDataset("test", transform=sd_transform(8))
    latents = dit.encode_images(torch.stack([ds[i][0] for i in idx]))
    scorer = Scorer(dit.denoiser, dit.alphas_cumprod, make_noise(100, (3, 8, 8), 0), batch_size=500)
    res = adaptive_classify(lambda jobs: scorer.evaluate(latents, torch.arange(10), jobs), len(idx), 10, [1], [100])
    correct = sum(r.pred == i // 2 for i, r in enumerate(res))
    assert correct >= 19  # chance of 19 of 20: 2e-18; measured 99.2% top-1 on the whole split


def test_dit_training_writes_a_loadable_pipeline_and_holds_out_a_stratified_validation_split(tmp_path):
    x, y = train_images()
    (x_fit, y_fit), (x_val, y_val) = validation_split(x, y, 0.2)
    assert len(y_fit) + len(y_val) == len(y) == 1438 and len(y_val) == 288
    fit_rows = {tuple(r.flatten().tolist()) + (int(c),) for r, c in zip(x_fit, y_fit)}
    assert sum(tuple(r.flatten().tolist()) + (int(c),) in fit_rows for r, c in zip(x_val, y_val)) <= 2  # digits has a few duplicates
    assert (torch.bincount(y_val, minlength=10) - 0.2 * torch.bincount(y, minlength=10)).abs().max() <= 1
    assert torch.equal(validation_split(x, y, 0.2)[1][1], y_val)  # seeded

    stats = train_dit(tmp_path, steps=2, batch=8, lr=1e-3, beta_schedule="scaled_linear", seed=0, patch=4,
                      heads=2, head_dim=8, layers=1, images=(x_fit[:32], y_fit[:32]))
    assert stats["n_train"] == 32 and stats["steps"] == 2
    dit = load_class_conditional(str(tmp_path))  # the public loader reads what the script wrote
    assert dit.num_classes == 10 and dit.learned_variance and dit.native_size == 8 and dit.id2label[3] == "three"
    assert dit.transformer.config.patch_size == 4 and dit.transformer.config.num_layers == 1


def test_model_card_protocol_classifies_test_images_of_each_digit():
    idx = first_of_each_class(2)
    images, labels = load_digits_arrays("test")
    x = torch.from_numpy(images[idx]).float().div(127.5).sub(1.0)[:, None]
    dit = load_class_conditional(DIT_MODELS["tiny"])
    top1 = dit_accuracy(dit.transformer, x, torch.from_numpy(labels[idx]), "scaled_linear")
    assert min(top1.values()) > 100 * 18.5 / 20  # at least 19 of 20 right (chance: 2e-18)


def test_tiny_flow_loads_as_an_sd3_flow_model_and_classifies_test_images_of_each_digit():
    from diffusion_classifier.objectives import FlowObjective

    clf = DiffusionClassifier.from_pretrained("tiny-flow", batch_size=500)
    model = clf.model
    assert model.family == "sd3" and model.native_size == 8 and model.autoencoder.vae is None
    assert model.text_encoders[2] is None and isinstance(model.objective, FlowObjective)
    assert model.transformer.config.in_channels == 3
    idx = first_of_each_class(2)
    ds = DigitsDataset("test")
    table = dataset_prompts("digits")
    preds = clf.classify([ds[i][0] for i in idx], table.prompts, to_keep=[5, 1], n_samples=[10, 50], seed=0)
    correct = sum(table.classidx[p.pred] == i // 2 for i, p in enumerate(preds))
    assert correct >= 19  # chance of 19 of 20: 2e-18


def test_the_readmes_python_example_runs_on_the_cpu_quietly_and_classifies(capsys):
    """The README's CPU block, executed as written: it loads without the libraries' bars and gets the digits right."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    capsys.readouterr()
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documentation's own example
    out, err = capsys.readouterr()
    assert err == ""  # no "Loading weights" bar, no warning
    preds, labels = [p.pred for p in scope["preds"]], list(scope["labels"])
    assert sum(p == y for p, y in zip(preds, labels)) >= 4 and out.startswith(str(preds))
    assert scope["clf"].classify([], scope["prompts"]) == []


def test_api_input_errors_are_the_projects_error_kinds():
    import pytest
    import torch

    from diffusion_classifier import DiffusionClassifier
    from diffusion_classifier.errors import InputError

    clf = DiffusionClassifier.from_pretrained("tiny")
    assert clf.classify(torch.empty(0, 3, 8, 8), ["a"]) == []
    with pytest.raises(InputError, match="expected PIL images or a \\(N, 3, H, W\\) tensor in \\[-1, 1\\], found int"):
        clf.classify([1, 2], ["a", "b"])
    with pytest.raises(InputError, match="expected image tensors of shape \\(N, 3, H, W\\).*found \\(1, 2, 8, 8\\)"):
        clf.classify(torch.zeros(1, 2, 8, 8).squeeze(0), ["a"])
    with pytest.raises(InputError, match="expected a non-empty list of prompt strings"):
        clf.classify([], "a photo")
    with pytest.raises(InputError, match="dtype must be one of float16, bfloat16, float32"):
        DiffusionClassifier.from_pretrained("tiny", dtype="half")
    with pytest.raises(InputError, match="dtype must be one of float16, bfloat16, float32 .* got torch.int8"):
        DiffusionClassifier.from_pretrained("tiny", dtype=torch.int8)  # not "folder lacks its parts"
    with pytest.raises(InputError, match="device must be a torch device such as 'cpu' or 'cuda', got 'gpu0'"):
        DiffusionClassifier.from_pretrained("tiny", device="gpu0")


def test_api_refuses_unusable_arguments_and_takes_usable_ones():
    """Bad counts, losses, noise, tensors and keywords are InputErrors before any work; scalars and iterables are used."""
    import pytest
    import torch
    from PIL import Image

    from diffusion_classifier import DiffusionClassifier
    from diffusion_classifier.errors import InputError

    clf = DiffusionClassifier.from_pretrained("tiny")
    img, prompts = DigitsDataset("test")[0][0], ["a", "b"]
    bank = make_noise(8, (3, 8, 8), 0)
    bad = [
        (dict(n_trials=0), "n_trials must be a positive integer, got 0"),
        (dict(n_samples=[2.5]), r"n_samples must be an integer or a list of integers, found \[2\.5\]"),
        (dict(loss="l3"), "loss must be one of l2, l1, huber, log_l2, got 'l3'"),
        (dict(noise=torch.full((8, 3, 8, 8), float("nan"))), "noise holds 1536 NaN and 0 infinite values"),
        (dict(noise=bank.numpy()), r"noise must hold a float tensor \(N, C, H, W\), found a ndarray"),
        (dict(noise=bank.to_sparse()), r"noise must hold a dense float tensor \(N, C, H, W\), found a torch.sparse_coo"),
        (dict(noise=bank * 1e30), r"noise holds values as large as [0-9.]+e\+30; expected standard normal draws"),
        (dict(seed=1.5), r"seed must be an integer in -2\*\*63\.\.2\*\*64-1, found 1\.5"),
        (dict(seed=2**70), r"seed must be an integer .*, found 1180591620717411303424"),
        (dict(temperature=float("inf")), "temperature must be a finite positive number, got inf"),
        (dict(img_size=0), "expected an image size S or .* got 0"),
        (dict(schedule="statistical", dleta=0.05), "unknown keyword argument\\(s\\) dleta; the statistical schedule takes"),
    ]
    for kwargs, message in bad:
        with pytest.raises(InputError, match=message):
            clf.classify([img], prompts, **{"n_samples": [2], **kwargs})
    with pytest.raises(InputError, match=r"found values in \[0, 255\]: scale \[0, 1\] images by 2x - 1"):
        clf.classify(torch.tensor([0.0, 255.0]).repeat(24).view(1, 3, 4, 4), prompts)
    for images, found in ((None, "NoneType"), ("digit.png", "str: open image files with PIL.Image.open")):
        with pytest.raises(InputError, match=f"expected PIL images or a \\(N, 3, H, W\\) tensor in \\[-1, 1\\], found {found}"):
            clf.classify(images, prompts)
    assert torch.equal(clf.classify([img], prompts, n_samples=[2], noise=bank.half())[0].scores,
                       clf.classify([img], prompts, n_samples=[2], noise=bank.half().float())[0].scores)
    with pytest.raises(InputError, match="at least 1 x 1 pixels, found one of 0 x 4"):
        clf.classify([Image.new("RGB", (0, 4))], prompts)
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        DiffusionClassifier(clf.model, batch_size=0)
    # one stage as plain integers, images and prompts from generators: the same as lists
    a = clf.classify([img], prompts, to_keep=[1], n_samples=[2], noise=bank)[0]
    b = clf.classify((i for i in [img]), (p for p in prompts), to_keep=1, n_samples=2, noise=bank)[0]
    assert torch.equal(a.scores, b.scores)


def test_dit_api_label_strings_that_are_not_plain_digits_are_input_errors():
    """'²' passes str.isdigit() but int() refuses it: it is a name the model lacks, not a ValueError traceback."""
    import pytest

    from diffusion_classifier import DiffusionClassifier
    from diffusion_classifier.errors import InputError

    clf = DiffusionClassifier.from_pretrained("diffusion_classifier/tiny_models/digits-dit")
    assert clf.embed([0, "1", "two", " 3 "]).tolist() == [0, 1, 2, 3]  # ints, digit strings, names, mixed
    for bad, message in (("²", r"'²' is not a class of this model: expected a label 0\.\.9"),
                         ("10", r"class label 10 is outside this model's classes 0\.\.9")):
        with pytest.raises(InputError, match=message):
            clf.embed([0, bad])


def test_api_refuses_repeated_candidates():
    """A prompt given twice, or a DiT class given as a label and as its name, would split one class's probability
    between two candidates the schedule can never tell apart: an InputError naming both positions."""
    import pytest

    from diffusion_classifier import DiffusionClassifier
    from diffusion_classifier.errors import InputError

    img = DigitsDataset("test")[0][0]
    clf = DiffusionClassifier.from_pretrained("tiny")
    with pytest.raises(InputError, match=r"candidates 0 \('a'\) and 2 \('a'\) are the same: expected distinct"):
        clf.classify([img], ["a", "b", "a"], n_samples=[2])
    assert len(clf.classify([img], ["a", "a "], n_samples=[2])[0].probs) == 2  # other strings are other prompts
    dit = DiffusionClassifier.from_pretrained("diffusion_classifier/tiny_models/digits-dit")
    with pytest.raises(InputError, match=r"candidates 1 \(3\) and 2 \('three'\) are the same \(both class 3\)"):
        dit.classify([img], [0, 3, "three"], n_samples=[2])
