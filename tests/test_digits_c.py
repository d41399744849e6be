"""digits_c: deterministic corruptions within the pixel range, served through the scripts' dataset path."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_script
from diffusion_classifier.data.corruptions import CORRUPTIONS, corrupt, corrupt_images
from diffusion_classifier.data.digits import load_digits_arrays, load_digits_native
from diffusion_classifier.data.registry import digits_c_dir, get_dataset, num_classes
from diffusion_classifier.data.transforms import sd_transform
from diffusion_classifier.errors import InputError


@pytest.fixture(scope="module")
def clean():
    return load_digits_native("test")


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_is_deterministic_in_range_and_grows_with_severity(clean, name):
    images = clean[0][:40]
    dist = []
    for s in (1, 3, 5):
        a = corrupt_images(images, name, s)
        b = corrupt_images(images, name, s)
        assert np.array_equal(a, b)  # same seed, same result
        assert a.shape == images.shape and a.min() >= 0.0 and a.max() <= 16.0
        assert not np.allclose(a, images)  # it does change the images
        dist.append(np.abs(a - images).mean())
    assert dist[0] < dist[2], dist  # severity 5 moves the pixels further than severity 1


def test_corruption_seed_is_per_image_index_not_order(clean):
    images = clean[0][:6]
    whole = corrupt_images(images, "gaussian_noise", 3)
    assert np.array_equal(corrupt(images[4], "gaussian_noise", 3, index=4), whole[4])
    assert not np.allclose(whole[0] - images[0], whole[1] - images[1])  # different draws per image
    assert not np.array_equal(corrupt_images(images, "gaussian_noise", 3, seed=1), whole)


def test_digits_c_dataset_serves_corrupted_test_split():
    ds = get_dataset("digits_c", ".", "test", None, corruption="contrast", severity=4)
    clean_u8, labels = load_digits_arrays("test")
    assert len(ds) == len(clean_u8) and ds.targets == labels.tolist()
    img, y = ds[7]
    arr = np.asarray(img)[..., 0]
    assert img.mode == "RGB" and arr.dtype == np.uint8 and y == labels[7]
    assert arr.std() < clean_u8[7].std()  # contrast reduced
    x = get_dataset("digits_c", ".", "test", sd_transform(8), corruption="contrast", severity=4)[7][0]
    assert x.shape == (3, 8, 8) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert num_classes("digits_c") == 10 and digits_c_dir("contrast", 4) == "digits_c_contrast_4"


@pytest.mark.parametrize("kwargs, match", [
    ({"corruption": "rain", "severity": 3}, "--corruption must be one of"),
    ({"corruption": "fog", "severity": 6}, "--severity must be an integer in 1..5"),
    ({"corruption": None, "severity": None}, "--corruption must be one of"),
])
def test_digits_c_rejects_bad_settings(kwargs, match):
    with pytest.raises(InputError, match=match):
        get_dataset("digits_c", ".", "test", None, **kwargs)


def test_corruption_flags_only_for_digits_c():
    with pytest.raises(InputError, match="digits_c only"):
        get_dataset("digits", ".", "test", None, corruption="fog", severity=1)


def test_clean_digits_unchanged_by_the_new_loader():
    from sklearn.datasets import load_digits

    from diffusion_classifier.data.digits import split_indices

    data = load_digits()
    _, test = split_indices(data.target)
    u8, _ = load_digits_arrays("test")
    assert np.array_equal(u8, np.rint(data.images[test] * (255.0 / 16.0)).astype(np.uint8))


def _run_script(name, argv):
    return load_script(f"{name}.py").main(argv)


@pytest.mark.parametrize("script, model_flags", [
    ("eval_prob_dit", ["--model", "tiny"]),
    ("eval_prob_adaptive", ["--version", "tiny"]),
])
def test_scripts_run_digits_c_with_the_anytime_schedule(tmp_path, script, model_flags):
    np.save(tmp_path / "sub.npy", np.array([0, 3]))
    out = _run_script(script, model_flags + [
        "--dataset", "digits_c", "--corruption", "fog", "--severity", "2", "--split", "test", "--to_keep", "1",
        "--n_samples", "8", "--schedule", "statistical", "--delta", "0.1", "--min_samples", "4",
        "--subset_path", str(tmp_path / "sub.npy"), "--log_dir", str(tmp_path / "logs"), "--no_progress",
        "--device", "cpu"])
    folder = tmp_path / "logs" / "digits_c_fog_2"
    assert out["folder"].startswith(str(folder)) and "_stat_d0.1_min4" in out["folder"]
    assert out["done"] == 2 and out["evaluations"] <= 2 * 10 * 8
    import json
    from pathlib import Path

    settings = json.loads((Path(out["folder"]) / "manifest.json").read_text())["settings"]
    assert settings["corruption"] == "fog" and settings["severity"] == 2 and settings["delta"] == 0.1
