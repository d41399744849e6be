"""Non-square models: a UNet whose sample_size is [H, W] scores images resized to (H, W) with no crop."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import eval_prob_adaptive
from conftest import load_script, write_char_tokenizer, write_scheduler
from diffusion_classifier.cli import run as run_cli
from diffusion_classifier.data.sizes import image_hw, image_size, size_name
from diffusion_classifier.data.transforms import sd_transform
from diffusion_classifier.engine import Scorer
from diffusion_classifier.errors import InputError
from diffusion_classifier.families import load_model
from diffusion_classifier.families.dit import load_class_conditional
from diffusion_classifier.loading import VAE
from diffusion_classifier.noise import make_noise, reference_noise
from diffusion_classifier.records import load_record
from diffusion_classifier.runs import winoground_run, zero_shot_run
from diffusion_classifier.schedules.statistical import make_schedule

H, W = 8, 16
PROMPTS = ["five", "six", "seven"]


@pytest.fixture(scope="module")
def wide_sd(tmp_path_factory) -> Path:
    """A seeded pixel-space Stable Diffusion folder whose UNet takes 8 x 16 images (sample_size [8, 16])."""
    from diffusion_classifier.training.sd import build_sd

    folder = tmp_path_factory.mktemp("wide_sd")
    torch.manual_seed(0)
    unet, text = build_sd(100, 86, 87, 87, size=(H, W), channels=(16, 32))
    unet.save_pretrained(folder / "unet")
    text.save_pretrained(folder / "text_encoder")
    write_char_tokenizer(folder / "tokenizer", max_length=32)
    write_scheduler(folder)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"], "vae": [None, None]}))
    return folder


def halves(width: int, height: int) -> Image.Image:
    """Black left half, white right half."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, width // 2 :] = 255
    return Image.fromarray(arr)


def test_sizes_normalise_to_one_form():
    assert image_hw(8) == (8, 8) and image_hw([28, 56]) == (28, 56) and image_hw((np.int64(4), 6)) == (4, 6)
    assert image_size((8, 8)) == 8 and image_size([28, 56]) == (28, 56) and size_name((28, 56)) == "28x56"
    for bad in [(1, 2, 3), 0, (0, 4), 1.5, "8", None, True]:
        with pytest.raises(InputError, match="expected an image size S or \\(H, W\\) of positive integers"):
            image_hw(bad)


def test_native_size_and_latent_shape_follow_the_config(wide_sd):
    model = load_model(str(wide_sd))
    assert model.native_size == (H, W) and model.latent_shape(model.native_size) == (3, H, W)
    assert model.latent_shape(8) == (3, 8, 8) and model.latent_shape((16, 16)) == (3, 16, 16)
    vae = VAE(SimpleNamespace(config=SimpleNamespace(block_out_channels=[1, 2, 3, 4], latent_channels=4,
                                                     scaling_factor=0.5)))
    vae.check_size((64, 128))
    with pytest.raises(InputError, match="image size must be divisible by 8 for this model, got 64x60$"):
        vae.check_size((64, 60))
    with pytest.raises(InputError, match="image size must be divisible by 8 for this model, got 60$"):  # as before
        vae.check_size(60)
    assert reference_noise((16, 32), n=2).shape == (2, 4, 2, 4)
    assert torch.equal(reference_noise(16, n=2), reference_noise((16, 16), n=2))


def test_dit_refuses_a_non_square_size_in_one_line(tiny_dit):
    dit = load_class_conditional(str(tiny_dit))
    assert dit.latent_shape(8) == dit.latent_shape((8, 8)) == (3, 8, 8)
    with pytest.raises(InputError, match=r"^this DiT takes 8px images \(latent 8\), got 8x16$"):
        dit.latent_shape((8, 16))


def test_transform_resizes_to_h_w_without_crop():
    x = sd_transform((H, W))(halves(64, 20))  # a wider image than 1:2: a crop would cut its sides
    assert x.shape == (3, H, W)
    assert torch.all(x[:, :, : W // 2 - 1] == -1) and torch.all(x[:, :, W // 2 + 1 :] == 1)
    assert sd_transform((W, H))(halves(10, 40)).shape == (3, W, H)  # a tall one from a wide image
    # a square size is today's resize + centre crop, also given as a pair
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    today = T.Compose([T.Resize(8, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(8), T.ToTensor(),
                       T.Normalize([0.5] * 3, [0.5] * 3)])(img)
    assert torch.equal(sd_transform(8)(img), today) and torch.equal(sd_transform((8, 8))(img), today)
    assert repr(sd_transform(8)) == repr(sd_transform((8, 8)))


def test_img_size_flag_takes_one_or_two_values(tmp_path, capsys):
    base = ["--version", "tiny", "--dataset", "digits", "--to_keep", "1", "--n_samples", "2", "--log_dir", str(tmp_path)]
    parse = eval_prob_adaptive.parse_args
    assert parse(base).img_size is None
    assert parse([*base, "--img_size", "28", "56"]).img_size == (28, 56)
    assert parse([*base, "--img_size", "28", "28"]).img_size == 28 and parse([*base, "--img_size", "28"]).img_size == 28
    dit = load_script("eval_prob_dit.py")
    assert dit.parse_args(["--model", "tiny", "--dataset", "digits", "--image_size", "8", "16"]).image_size == (8, 16)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(eval_prob_adaptive.main, [*base, "--img_size", "1", "2", "3"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "error: argument --img_size: expected S or H W, got 3 values"


def test_save_noise_takes_h_w(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mod = load_script("scripts/save_noise.py")
    out = mod.main(["--img_size", "16", "32", "--n", "2"])
    assert out.name == "noise_16x32.pt" and torch.equal(torch.load(out, weights_only=True), reference_noise((16, 32), n=2))
    assert mod.main(["--img_size", "16", "16", "--n", "2"]).name == "noise_16.pt"
    with pytest.raises(InputError, match=r"--img_size must be divisible by 8 \(--downsample\), got 16x20$"):
        mod.main(["--img_size", "16", "20"])


def test_run_names_and_manifests():
    eps = SimpleNamespace(prediction_type="epsilon", error_space="eps")
    kw = dict(version="tiny", model=None, source="s", dataset="digits", split="test", n_trials=1, to_keep=[1],
              n_samples=[2], loss="l2", interpolation="bicubic", noise="seed 0", prompts=[], subset=None,
              corruption=None, severity=None, schedule="reference", z=3.0, min_samples=10, delta=None, variance="iid",
              timestep_weights=None, objective=eps, error_space=None, flow_grid="timesteps", no_t5=False, guidance=None)
    square = zero_shot_run(img_size=8, **kw)
    assert square.name == "vtiny_1trials_1keep_2samples_8" and square.manifest["img_size"] == 8  # as before
    assert zero_shot_run(img_size=(8, 8), **kw) == square
    wide = zero_shot_run(img_size=(28, 56), **kw)
    assert wide.name == "vtiny_1trials_1keep_2samples_28x56" and wide.manifest["img_size"] == [28, 56]
    assert json.loads(json.dumps(wide.manifest)) == wide.manifest  # what the manifest file reads back
    wino = dict(model="sd", version="tiny", model_path=None, source="s")
    native = winoground_run(img_size=(H, W), native_size=(H, W), **wino)
    assert native.name == "sd_vtiny_t5_1trials" and native.manifest["img_size"] == [H, W]
    assert winoground_run(img_size=8, native_size=(H, W), **wino).name == "sd_vtiny_t5_1trials_8"
    assert winoground_run(img_size=8, native_size=8, **wino).name == "sd_vtiny_t5_1trials"


def test_api_errors_of_a_wide_image_equal_the_engines(wide_sd):
    from diffusion_classifier import DiffusionClassifier

    model = load_model(str(wide_sd))
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    classify, n_rows = make_schedule("reference", [2, 1], [2, 4], 1, T=model.T)
    noise = make_noise(n_rows, (3, H, W), 3)
    pred = DiffusionClassifier(model, batch_size=4).classify(img, PROMPTS, to_keep=[2, 1], n_samples=[2, 4],
                                                             noise=noise)[0]
    latents = model.encode_images(sd_transform((H, W))(img)[None])  # (1, 3, 8, 16)
    scorer = Scorer(model.denoiser, model.make_objective(model.latent_shape((H, W))), noise, "cpu", torch.float32, 4)
    embeds = model.encode_prompts(PROMPTS)
    result = classify(lambda jobs: scorer.evaluate(latents, embeds, jobs, "l2"), 1, len(PROMPTS))[0]
    assert result.pred == pred.pred and set(result.errors) == set(pred.errors)
    for k, e in result.errors.items():
        assert torch.equal(e["t"], pred.errors[k]["t"])
        torch.testing.assert_close(e["pred_errors"], pred.errors[k]["pred_errors"], rtol=0, atol=0)


def test_script_scores_at_the_native_non_square_size(wide_sd, tmp_path):
    """eval_prob_adaptive.py on the wide model: its folder has no size tag, its errors are the API's."""
    from diffusion_classifier import DiffusionClassifier
    from diffusion_classifier.data.digits import DigitsDataset

    (tmp_path / "prompts.csv").write_text("prompt,classname,classidx\n" + "".join(f"{p},{p},{c}\n" for p, c in
                                                                                zip(PROMPTS, (5, 6, 7))))
    np.save(tmp_path / "subset.npy", np.array([0, 5]))  # a five and a six
    args = ["--model", str(wide_sd), "--dataset", "digits", "--split", "test", "--prompt_path",
            str(tmp_path / "prompts.csv"), "--subset_path", str(tmp_path / "subset.npy"), "--log_dir",
            str(tmp_path / "logs"), "--to_keep", "2", "1", "--n_samples", "2", "4", "--no_progress"]
    folder = Path(eval_prob_adaptive.main(args)["folder"])
    assert folder.name == f"v{wide_sd.name}_1trials_2_1keep_2_4samples_8x16"  # not 512: tagged, as squares are
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["settings"]["img_size"] == [H, W]
    _, n_rows = make_schedule("reference", [2, 1], [2, 4], 1)
    noise = make_noise(n_rows, (3, H, W), 0)  # --seed 0
    ds = DigitsDataset("test")
    preds = DiffusionClassifier(load_model(str(wide_sd))).classify([ds[i][0] for i in (0, 5)], PROMPTS,
                                                                   to_keep=[2, 1], n_samples=[2, 4], noise=noise)
    for p, idx in zip(preds, (0, 5)):
        rec = load_record(folder / f"{idx:03d}.pt")
        assert rec["pred"] == (5, 6, 7)[p.pred]  # the record names the class, the API the prompt
        for k, e in p.errors.items():
            torch.testing.assert_close(rec["errors"][k]["pred_errors"], e["pred_errors"])
