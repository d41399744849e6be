"""Default packing (batch size, images per call) and static-shape padding never change a record."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eval_prob_adaptive  # noqa: E402
import eval_prob_dit  # noqa: E402
from diffusion_classifier.engine import Jobs, Scorer  # noqa: E402
from diffusion_classifier.errors import InputError  # noqa: E402
from diffusion_classifier.packing import REFERENCE_BATCH_SIZE, auto_batch_size, auto_image_batch, resolve_packing  # noqa: E402
from diffusion_classifier.records import MANIFEST, load_record  # noqa: E402

N_IMAGES = 20  # more than one default group of images, the last one short


def test_resolve_packing_honours_given_values_and_periodic_noise():
    cpu, tiny, sd512 = torch.device("cpu"), 3 * 8 * 8, 4 * 64 * 64
    assert resolve_packing(cpu, tiny) == (256, 16)  # small latents: packed by default
    assert resolve_packing(cpu, sd512) == (REFERENCE_BATCH_SIZE, 4)  # no more latent memory per batch than the reference
    assert resolve_packing(cpu, 4 * 32 * 32) == (128, 16)
    assert resolve_packing(cpu, 4 * 128 * 128)[0] == REFERENCE_BATCH_SIZE  # never fewer jobs than the reference's 32
    assert resolve_packing(cpu, tiny, 32, 1) == (32, 1)  # the user's values, even where they equal the reference's
    assert resolve_packing(cpu, tiny, 7) == (7, auto_image_batch(cpu, 7))
    assert resolve_packing(cpu, tiny, None, 3, batch_sets_noise=True) == (REFERENCE_BATCH_SIZE, 3)
    assert resolve_packing(cpu, tiny, 64, None, batch_sets_noise=True)[0] == 64
    for device in ("cuda:0", "mps", cpu):  # every device gets a packing of several images
        assert resolve_packing(device, tiny)[1] > 1 and auto_batch_size(device, tiny) >= REFERENCE_BATCH_SIZE
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="--batch_size must be an integer >= 1"):
            resolve_packing(cpu, tiny, bad)


def _adaptive(tmp: Path, name: str, *flags: str) -> Path:
    np.save(tmp / "subset.npy", np.arange(N_IMAGES))
    out = eval_prob_adaptive.main(["--version", "tiny", "--dataset", "digits", "--split", "test", "--to_keep", "5", "1",
                                   "--n_samples", "4", "8", "--subset_path", str(tmp / "subset.npy"),
                                   "--log_dir", str(tmp / name), "--no_progress", *flags])
    assert out["done"] == N_IMAGES
    return Path(out["folder"])


def test_default_packing_gives_the_records_of_the_reference_packing(tmp_path):
    packed = _adaptive(tmp_path, "default")  # no --batch_size / --image_batch: the device's packing
    plain = _adaptive(tmp_path, "plain", "--image_batch", "1", "--batch_size", "32")
    files = sorted(plain.glob("*.pt"))
    assert len(files) == N_IMAGES and sorted(f.name for f in packed.glob("*.pt")) == [f.name for f in files]
    for f in files:
        a, b = load_record(f), load_record(packed / f.name)
        assert (a["pred"], a["label"]) == (b["pred"], b["label"])
        assert set(a["errors"]) == set(b["errors"])
        for c in a["errors"]:
            assert torch.equal(a["errors"][c]["t"], b["errors"][c]["t"])
            # same jobs, same noise; only the batch a job shares changes, i.e. float32 summation order at most
            torch.testing.assert_close(a["errors"][c]["pred_errors"], b["errors"][c]["pred_errors"], rtol=1e-5, atol=1e-7)


def test_dit_per_class_keeps_the_reference_batch_size_where_it_sets_the_noise(tiny_dit, tmp_path):
    base = ["--model", str(tiny_dit), "--dataset", "digits", "--t_interval", "250", "--imgs_to_eval", "2", "--no_progress"]
    out = eval_prob_dit.main([*base, "--cls", "3", "--log_dir", str(tmp_path / "a")])
    manifest = json.loads((Path(out["folder"]) / MANIFEST).read_text())
    assert manifest["settings"]["batch_size"] == REFERENCE_BATCH_SIZE  # periodic noise: row k mod 32 as in the reference
    out = eval_prob_dit.main([*base, "--cls", "3", "--randomize_noise", "--log_dir", str(tmp_path / "b")])
    manifest = json.loads((Path(out["folder"]) / MANIFEST).read_text())
    assert manifest["settings"]["batch_size"] is None  # the batch size does not touch the numbers there


class ShapeRecorder:
    """A deterministic per-sample denoiser that remembers every batch size it was called with."""

    def __init__(self):
        self.sizes: list[int] = []
        self.weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))

    def __call__(self, x_t, t, cond):
        self.sizes.append(len(x_t))
        mixed = torch.einsum("oc,bchw->bohw", self.weight, x_t)
        return mixed * torch.cos(t.float() / 300).view(-1, 1, 1, 1) + cond.view(-1, 1, 1, 1)


@pytest.mark.parametrize("n_jobs", [1, 7, 16, 23])
def test_padding_the_last_batch_keeps_every_result(n_jobs):
    g = torch.Generator().manual_seed(1)
    latents, noise, conds = torch.randn(3, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g), torch.randn(4)
    ab = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    jobs = Jobs.build(torch.randint(0, 3, (n_jobs,), generator=g), torch.randint(0, 4, (n_jobs,), generator=g),
                      torch.randint(0, 1000, (n_jobs,), generator=g), torch.randint(0, 5, (n_jobs,), generator=g))
    plain, padded = ShapeRecorder(), ShapeRecorder()
    seen = []
    expected = Scorer(plain, ab, noise, batch_size=8).evaluate(latents, conds, jobs)
    got = Scorer(padded, ab, noise, batch_size=8, pad_to_batch=True).evaluate(
        latents, conds, jobs, progress=seen.append)
    assert got.shape == (n_jobs,)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert set(padded.sizes) == {8} and len(padded.sizes) == -(-n_jobs // 8)  # one static batch shape
    assert sum(seen) == n_jobs  # progress counts real jobs only
    assert plain.sizes[-1] == n_jobs - 8 * (len(plain.sizes) - 1)
