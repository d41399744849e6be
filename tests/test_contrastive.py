"""The contrastive baseline (training/contrastive.py): a tiny CLIP trained with CLIP's objective on fashion pairs,
whose folder baselines.load_clip scores; its processor keeps both halves of a pair and gives the very pixels the
training saw; training resumes exactly and lowers the InfoNCE loss."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from diffusion_classifier.baselines import load_clip
from diffusion_classifier.data import fashion_mnist
from diffusion_classifier.training import contrastive
from diffusion_classifier.training.common import Checkpointing, TrainingPaused, build_tokenizer, draw_batch
from diffusion_classifier.training.data import training_data

PAIRS = training_data("fashion_pairs")  # its captions and folders; the images below are synthetic
TINY = dict(steps=4, batch=16, lr=1e-3, seed=0, patch=7, heads=2, head_dim=8, layers=1)


def synthetic_items(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 28, 28) items in [-1, 1] on the uint8 grid, whose class (0..9) is a bright 8x8 block at its own place,
    over noise: a task a few steps of training can start to learn."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    u = torch.randint(0, 60, (n, 28, 28), generator=g)
    for i, c in enumerate(y.tolist()):
        r, k = divmod(c, 4)
        u[i, 2 + 8 * r:10 + 8 * r, 1 + 7 * k:8 + 7 * k] = 255
    return u.float().div(127.5).sub(1.0)[:, None], y


def to_pil(x: torch.Tensor) -> Image.Image:
    """A (1, H, W) image in [-1, 1] on the uint8 grid -> the grey PIL image it came from."""
    return Image.fromarray(x[0].add(1).mul(127.5).round().byte().numpy())


def weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "fashion-pairs-clip"
    stats = contrastive.train_clip(out, **TINY, data=PAIRS, images=synthetic_items())
    return out, stats


def test_a_few_steps_give_a_clip_folder_that_the_baseline_scores_as_clip_computes(trained, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    out, stats = trained
    assert stats["steps"] == 4 and stats["image_size"] == 56 and np.isfinite(stats["loss"])
    assert stats["params"] == stats["vision_params"] + stats["text_params"] + 1  # + the logit scale
    x, y = synthetic_items(6, seed=1)
    pairs = torch.cat([x[:3], x[3:]], dim=-1)  # (3, 1, 28, 56)
    images = [to_pil(p) for p in pairs]
    captions = PAIRS.captions_for(10 * int(y[0]) + int(y[3]))[:2] + ["a bag and a shirt."]
    scores = load_clip(str(out))(images, captions)
    assert scores.shape == (3, 3) and torch.isfinite(scores).all()

    clip = CLIPModel.from_pretrained(out).eval()  # the same logits, from our own pixels and the saved tokenizer
    tok = CLIPProcessor.from_pretrained(out).tokenizer
    trained_with = build_tokenizer(tmp_path / "tok", PAIRS)  # the tokenizer the training encoded its captions with
    every = [cap for c in range(PAIRS.num_classes) for cap in PAIRS.captions_for(c)]
    assert tok(every).input_ids == trained_with(every).input_ids
    text = tok(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = clip(input_ids=text.input_ids, attention_mask=text.attention_mask,
                      pixel_values=contrastive.pixel_values(pairs, 56)).logits_per_image  # (image, caption)
    torch.testing.assert_close(scores, logits.T.double(), rtol=1e-5, atol=1e-5)
    assert abs(clip.logit_scale.item() - contrastive.LOGIT_SCALE_INIT) < 0.1  # learned, from CLIP's start


def test_the_processor_keeps_both_halves_and_gives_the_training_pixels(trained):
    from transformers import CLIPProcessor

    processor = CLIPProcessor.from_pretrained(trained[0]).image_processor
    assert not processor.do_center_crop
    u = np.random.default_rng(0).integers(0, 256, (2, 28, 56), dtype=np.uint8)
    x = torch.from_numpy(u).float().div(127.5).sub(1.0)[:, None]  # how the training data is read
    pixels = processor(images=[Image.fromarray(a) for a in u], return_tensors="pt").pixel_values
    assert pixels.shape == (2, 3, 56, 56)
    torch.testing.assert_close(pixels, contrastive.pixel_values(x, 56), rtol=0, atol=1e-6)  # float32 rounding only
    torch.testing.assert_close(pixels[:, :, ::2], x.expand(-1, 3, -1, -1), rtol=0, atol=1e-6)  # rows doubled, no crop
    rgb = processor(images=[Image.fromarray(a).convert("RGB") for a in u], return_tensors="pt").pixel_values
    assert torch.equal(rgb, pixels)

    v = u.copy()
    v[:, :, 28:] = 255 - v[:, :, 28:]  # only the right item changes
    changed = processor(images=[Image.fromarray(a) for a in v], return_tensors="pt").pixel_values
    assert torch.equal(changed[..., :28], pixels[..., :28])
    assert (changed[..., 28:] != pixels[..., 28:]).float().mean() > 0.99


def test_clip_loss_is_transformers_contrastive_loss():
    from transformers import CLIPModel

    clip = contrastive.build_clip(50, 47, 48, 48, 56, 14, 2, 8, 1).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 47, (5, 6), generator=g)
    ids[:, -1] = 48
    with torch.no_grad():
        out = CLIPModel.forward(clip, input_ids=ids, pixel_values=torch.randn(5, 3, 56, 56, generator=g),
                                return_loss=True)
    torch.testing.assert_close(contrastive.clip_loss(out.logits_per_image), out.loss)
    assert clip.config.vision_config.image_size == 56 and clip.config.projection_dim == contrastive.PROJECTION_DIM


def test_a_run_paused_and_resumed_equals_an_uninterrupted_run(tmp_path):
    images = synthetic_items()
    whole = contrastive.train_clip(tmp_path / "whole", **TINY, data=PAIRS, images=images)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TrainingPaused) as paused:
        contrastive.train_clip(tmp_path / "resumed", **TINY, data=PAIRS, images=images,
                               checkpoint=Checkpointing(path, {"kind": "clip"}, stop_at=2))
    assert paused.value.step == 2
    resumed = contrastive.train_clip(tmp_path / "resumed", **TINY, data=PAIRS, images=images,
                                     checkpoint=Checkpointing(path, {"kind": "clip"}, resume=True))
    wa, wb = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed["loss"] == whole["loss"] and resumed["acc"] == whole["acc"]
    other = contrastive.train_clip(tmp_path / "seed1", **{**TINY, "seed": 1}, data=PAIRS, images=images)
    assert other["loss"] != whole["loss"]


def test_training_lowers_the_infonce_loss_of_a_fixed_batch(tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    images = synthetic_items()
    x, labels = draw_batch(*images, 32, torch.Generator().manual_seed(5), parts=2, item_classes=10)
    captions = [PAIRS.captions_for(int(c))[0] for c in labels]

    def loss_after(steps: int) -> float:
        out = tmp_path / str(steps)
        contrastive.train_clip(out, **{**TINY, "steps": steps, "batch": 32, "lr": 3e-3}, data=PAIRS, images=images)
        clip, tok = CLIPModel.from_pretrained(out).eval(), CLIPTokenizer.from_pretrained(out)
        text = tok(captions, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = clip(input_ids=text.input_ids, attention_mask=text.attention_mask,
                          pixel_values=contrastive.pixel_values(x, 56)).logits_per_image
        return contrastive.clip_loss(logits).item()

    first, later = loss_after(1), loss_after(100)  # the lr warms up over 100 steps
    assert first > 3.4 and later < first - 0.8, (first, later)  # ln 32 = 3.47: chance


needs_fashion = pytest.mark.skipif(
    not all((fashion_mnist.PACKAGE_DIR / f"{n}.gz").is_file() for n in fashion_mnist.FILES["train"]),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@pytest.mark.slow  # launches a script as a separate process
@needs_fashion
def test_the_script_trains_the_clip_kind_on_fashion_pairs(tmp_path):
    args = [sys.executable, str(REPO / "scripts" / "train_tiny_models.py"), "--data", "fashion_pairs",
            "--model", "clip", "--steps", "3", "--batch", "8", "--patch", "14", "--heads", "2", "--head-dim", "8", "--layers", "1",
            "--out", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ck")]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "out" / PAIRS.folders["clip"]
    stats = json.loads((folder / "training.json").read_text())
    assert stats["steps"] == 3 and stats["patch"] == 14 and stats["n_train"] == 60000 and stats["threads"] == 1
    card = (folder / "README.md").read_text()
    assert ("python3 scripts/train_tiny_models.py --data fashion_pairs --model clip --steps 3 --batch 8 --lr 0.001 "
            "--patch 14 --heads 2 --head-dim 8 --layers 1 --seed 0 --threads 1") in card
    assert f"run_compositional.py --model clip --model_path diffusion_classifier/tiny_models/{folder.name}" in card
    assert not (tmp_path / "ck" / f"{folder.name}.pt").exists()  # removed once the model is saved
    scores = load_clip(str(folder))([Image.new("L", (56, 28))], ["a bag and a shirt.", "a shirt and a bag."])
    assert scores.shape == (2, 1)
