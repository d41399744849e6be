"""Fashion-MNIST: IDX files read through torchvision from the dataset root or the distribution package's
folder (decompressed once into a cache), the one-line error when absent, and both classification scripts on it."""
from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from diffusion_classifier.data import fashion_mnist
from diffusion_classifier.data.registry import get_dataset
from diffusion_classifier.errors import MissingError


needs_package = pytest.mark.skipif(
    not all((fashion_mnist.PACKAGE_DIR / f"{n}.gz").is_file() for pair in fashion_mnist.FILES.values() for n in pair),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    """The split's two IDX files (magic 2051 images, 2049 labels, big-endian sizes), gzipped as Zalando ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    img_name, lab_name = fashion_mnist.FILES[split]
    n, h, w = images.shape
    blobs = {img_name: struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes(),
             lab_name: struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()}
    for name, blob in blobs.items():
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(blob)
        else:
            (folder / name).write_bytes(blob)


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A stand-in for the distribution package's folder (FASHION_MNIST_DIR) and an empty cache."""
    pkg = tmp_path / "pkg"
    train, test = fake_split(30, 0), fake_split(20, 1)
    write_idx(pkg, "train", *train)
    write_idx(pkg, "test", *test)
    monkeypatch.setenv(fashion_mnist.PACKAGE_ENV, str(pkg))
    monkeypatch.setenv(fashion_mnist.CACHE_ENV, str(tmp_path / "cache"))
    return {"dir": pkg, "train": train, "test": test, "cache": tmp_path / "cache"}


def test_gzipped_idx_files_are_decompressed_once_into_the_cache_and_read_by_torchvision(package, tmp_path):
    images, labels = fashion_mnist.load_arrays("test", root=tmp_path / "empty_root")
    assert np.array_equal(images, package["test"][0]) and np.array_equal(labels, package["test"][1])
    raw = package["cache"] / "FashionMNIST" / "raw"
    assert fashion_mnist.has_raw(raw)
    stamp = {f.name: f.stat().st_mtime_ns for f in raw.iterdir()}
    images, labels = fashion_mnist.load_arrays("train", root=None)
    assert np.array_equal(images, package["train"][0]) and labels.dtype == np.int64
    assert {f.name: f.stat().st_mtime_ns for f in raw.iterdir()} == stamp  # not decompressed again

    ds = get_dataset("fashion_mnist", tmp_path / "empty_root", "test")
    img, label = ds[7]
    assert img.mode == "L" and img.size == (28, 28) and label == 7
    assert np.array_equal(np.asarray(img), package["test"][0][7])
    assert list(ds.classes) == fashion_mnist.CLASSNAMES


def test_a_dataset_root_with_torchvision_raw_files_is_used_as_it_is(package, tmp_path):
    root = tmp_path / "root"
    own = fake_split(12, 5)
    write_idx(root / "FashionMNIST" / "raw", "test", *own, gz=False)
    write_idx(root / "FashionMNIST" / "raw", "train", *fake_split(10, 6), gz=False)
    assert fashion_mnist.torchvision_root(root) == root
    assert np.array_equal(fashion_mnist.load_arrays("test", root)[0], own[0])  # not the package's files
    assert not (package["cache"] / "FashionMNIST").exists()


def test_gzipped_files_under_the_dataset_root_come_before_the_package(package, tmp_path):
    root = tmp_path / "root"
    own = fake_split(11, 7)
    write_idx(root, "test", *own)
    write_idx(root, "train", *fake_split(10, 8))
    assert np.array_equal(fashion_mnist.load_arrays("test", root)[1], own[1])


def test_missing_data_names_both_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(fashion_mnist.PACKAGE_ENV, str(tmp_path / "no_package"))
    monkeypatch.setenv(fashion_mnist.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(MissingError) as e:
        get_dataset("fashion_mnist", tmp_path / "root", "test")
    message = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in message and "FashionMNIST(DIR, download=True)" in message
    assert "\n" not in message


def test_truncated_idx_file_is_one_line(package, tmp_path):
    raw = package["dir"] / "t10k-images-idx3-ubyte.gz"
    with gzip.open(raw, "wb") as f:
        f.write(struct.pack(">IIII", 2051, 20, 28, 28) + b"\0" * 100)  # far fewer bytes than 20 images
    from diffusion_classifier.errors import InputError

    with pytest.raises(InputError, match="IDX"):
        fashion_mnist.load_arrays("test", tmp_path / "empty_root")


def run(script: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow  # launches a script as a separate process
def test_both_scripts_classify_fashion_mnist_and_records_carry_its_labels(package, tmp_path):
    env = {**os.environ, fashion_mnist.PACKAGE_ENV: str(package["dir"]), fashion_mnist.CACHE_ENV: str(package["cache"])}
    common = ["--dataset", "fashion_mnist", "--split", "test", "--dataset_root", str(tmp_path / "empty_root"),
              "--log_dir", str(tmp_path / "logs"), "--to_keep", "1", "--n_samples", "4", "--device", "cpu",
              "--no_progress"]
    sd = run("eval_prob_adaptive.py", ["--version", "tiny", "--img_size", "8", *common], env)
    assert sd.returncode == 0, sd.stderr
    dit = run("eval_prob_dit.py", ["--model", "tiny", "--image_size", "8", *common], env)
    assert dit.returncode == 0, dit.stderr
    folders = sorted((tmp_path / "logs" / "fashion_mnist").iterdir())
    assert len(folders) == 2
    for folder in folders:
        records = sorted(folder.glob("*.pt"))
        assert len(records) == 20
        labels = [torch.load(r, weights_only=True)["label"] for r in records]
        assert labels == package["test"][1].tolist()

    env[fashion_mnist.PACKAGE_ENV] = str(tmp_path / "no_package")
    env[fashion_mnist.CACHE_ENV] = str(tmp_path / "empty_cache")
    missing = run("eval_prob_adaptive.py", ["--version", "tiny", "--img_size", "8", *common], env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("error: fashion_mnist data not found") and "apt-get install dataset-fashion-mnist" in last


@needs_package
def test_the_installed_package_holds_the_whole_balanced_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv(fashion_mnist.PACKAGE_ENV, raising=False)
    monkeypatch.setenv(fashion_mnist.CACHE_ENV, str(tmp_path / "cache"))
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = fashion_mnist.load_arrays(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert np.bincount(labels).tolist() == [n // 10] * 10


@pytest.mark.slow  # half a minute: 100 real test images through the shipped model
@needs_package
def test_shipped_fashion_sd_classifies_test_images_of_every_class(tmp_path, monkeypatch):
    from diffusion_classifier import DiffusionClassifier
    from diffusion_classifier.data.prompts import dataset_prompts

    monkeypatch.delenv(fashion_mnist.PACKAGE_ENV, raising=False)
    monkeypatch.setenv(fashion_mnist.CACHE_ENV, str(tmp_path / "cache"))
    ds = fashion_mnist.load_dataset(None, "test")
    labels = ds.targets.numpy()
    idx = [int(i) for c in range(10) for i in np.flatnonzero(labels == c)[:3]]  # the first 3 test images of each class
    clf = DiffusionClassifier.from_pretrained("fashion", batch_size=500)
    assert clf.model.native_size == 28 and clf.model.autoencoder.vae is None
    table = dataset_prompts("fashion_mnist")
    preds = clf.classify([ds[i][0] for i in idx], table.prompts, to_keep=[5, 1], n_samples=[10, 50], seed=0)
    correct = sum(table.classidx[p.pred] == labels[i] for i, p in zip(idx, preds))
    assert correct >= 24  # 27 of 30 where measured (keep 5 1 / samples 10 50); chance level is 3 of 30


def test_shipped_fashion_models_resolve_by_name_and_load_at_28_pixels():
    from diffusion_classifier.families import SD_VERSIONS
    from diffusion_classifier.families.dit import load_class_conditional, resolve_dit_model

    from diffusion_classifier.families import load_model

    assert Path(SD_VERSIONS["fashion"]).name == "fashion-sd"
    flow = load_model(SD_VERSIONS["fashion-flow"])  # --version fashion-flow: SD3 layout, flow matching, no T5
    assert flow.native_size == 28 and flow.make_objective(flow.latent_shape(28)).prediction_type == "flow"
    assert json.loads((Path(SD_VERSIONS["fashion-flow"]) / "heldout_train.json").read_text())["per_class"] == 500
    unet_flow = load_model(SD_VERSIONS["fashion-flow-unet"])  # fashion-sd's layout, the flow objective
    assert unet_flow.family == "sd" and unet_flow.make_objective(unet_flow.latent_shape(28)).prediction_type == "flow"
    assert json.loads((Path(SD_VERSIONS["fashion-flow-unet"]) / "heldout_train.json").read_text()) == \
        json.loads((Path(SD_VERSIONS["fashion"]) / "heldout_train.json").read_text())  # the same held-out images
    dit = load_class_conditional(resolve_dit_model(256, "fashion"))
    assert dit.num_classes == 10 and dit.native_size == 28 and dit.learned_variance
    assert [dit.id2label[i] for i in range(10)] == fashion_mnist.CLASSNAMES
