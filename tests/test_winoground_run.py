"""run_winoground end to end on tiny models and a tiny local Winoground copy, against direct computations."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import run_winoground
from conftest import load_script, write_char_tokenizer
from diffusion_classifier import cli
from diffusion_classifier.schedules.staged import interval_timesteps
from diffusion_classifier.records import load_record, save_record
from diffusion_classifier.data.winoground import load_winoground, write_winoground
from diffusion_classifier.tasks.matching import pair_jobs
from diffusion_classifier.tasks.winoground import format_scores, winoground_scores

ROOT = Path(__file__).resolve().parents[1]
# short captions: the test tokenizer keeps 16 characters
CAPTIONS = [("red on blue.", "blue on red."), ("a dog bit.", "a bit dog."), ("two up.", "up two.")]
TAGS = ["Object", "Relation", "Both"]


def _images(seed: int = 0) -> dict[str, Image.Image]:
    rng = np.random.default_rng(seed)
    return {f"ex_{e}_img_{k}": Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            for e in range(len(CAPTIONS)) for k in range(2)}


def _records() -> list[dict]:
    return [{"id": e, "caption_0": c0, "caption_1": c1, "tag": "Noun", "secondary_tag": "", "num_main_preds": 1,
             "collapsed_tag": TAGS[e], "image_0": f"ex_{e}_img_0", "image_1": f"ex_{e}_img_1"}
            for e, (c0, c1) in enumerate(CAPTIONS)]


@pytest.fixture(scope="module")
def wino(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wino")
    return {"folder": write_winoground(root / "folder", _records(), _images()),
            "zip": write_winoground(root / "zip", _records(), _images(), zip_images=True)}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A transformers CLIP folder: a small random CLIPModel, an 8px image processor, the character tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    write_char_tokenizer(folder / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=8, patch_size=4),
        projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    CLIPProcessor(image_processor=processor, tokenizer=tok).save_pretrained(folder)
    return folder


def run(capsys, *argv) -> tuple[dict, list[str]]:
    """(the run's result, its score lines); its last line is the overall scores and the counts."""
    result = run_winoground.main([*map(str, argv), "--no_progress"])
    out = capsys.readouterr().out.splitlines()
    overall = result["scores"]["Overall"]
    assert out[-1] == (f"{result['folder']}: text score {overall['text']['score']:.1f}, image score "
                       f"{overall['image']['score']:.1f}, group score {overall['group']['score']:.1f} over {result['n']} "
                       f"examples ({result['computed']} computed now, {result['skipped']} already done, "
                       f"{result['repaired']} repaired)")
    return result, [line for line in out[:-1] if " score" in line]


def check_summary(result: dict, lines: list[str], folder: Path, examples) -> np.ndarray:
    """Printed lines and the saved JSON agree with winoground_scores on the saved per-example scores."""
    records = [load_record(folder / f"{ex.id}.pt") for ex in examples]
    assert [r["id"] for r in records] == [ex.id for ex in examples]
    assert [r["tag"] for r in records] == [ex.collapsed_tag for ex in examples]
    scores = np.stack([r["scores"].numpy() for r in records])
    expected = winoground_scores(scores, [ex.collapsed_tag for ex in examples])
    assert [line for line in lines if "normalized" not in line] == format_scores(expected)
    saved = json.loads((folder / "results.json").read_text())
    assert saved["scores"] == json.loads(json.dumps(expected))
    assert saved["lines"] == lines and result["lines"] == lines
    return scores


# ---------------------------------------------------------------- Stable Diffusion format


def direct_errors(model_dir: Path, ex, timesteps, n_trials, noise, noise_rows) -> torch.Tensor:
    """(3, 2, n_t, n_trials) l2 errors from the parts called directly, one UNet call per (caption, image) pair."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet").eval()
    text = CLIPTextModel.from_pretrained(model_dir / "text_encoder").eval()
    tok = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    alphas = DDPMScheduler.from_pretrained(model_dir / "scheduler").alphas_cumprod.double()
    vae = AutoencoderKL.from_pretrained(model_dir / "vae").eval() if (model_dir / "vae").is_dir() else None
    errors = torch.zeros(3, 2, len(timesteps), n_trials, dtype=torch.float64)
    with torch.no_grad():
        for c, caption in enumerate([ex.caption_0, ex.caption_1, ""]):
            ids = tok([caption], padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            emb = text(ids)[0]
            for i in range(2):
                # 8px images at img_size 8: resize and crop are identities, so x = pixels scaled to [-1, 1]
                pixels = np.asarray(ex.open_image(i), dtype=np.float32) / 127.5 - 1.0
                x0 = torch.from_numpy(pixels).permute(2, 0, 1)[None]
                if vae is not None:
                    x0 = vae.encode(x0).latent_dist.mean * vae.config.scaling_factor
                # every (t, trial) of this pair in one call: row k is t = timesteps[k // n_trials]
                t = torch.tensor(timesteps).repeat_interleave(n_trials)  # (n,)
                eps = noise[torch.tensor(noise_rows)]  # (n, C, h, w)
                a = alphas[t].view(-1, 1, 1, 1)
                x_t = (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()
                eps_hat = unet(x_t, t, encoder_hidden_states=emb.expand(len(t), -1, -1)).sample
                errors[c, i] = ((eps_hat - eps) ** 2).mean(dim=(1, 2, 3)).view(len(timesteps), n_trials)
    return errors


def test_pair_jobs_share_noise_and_timesteps():
    assert interval_timesteps(5)[:3] == [2, 7, 12] and len(interval_timesteps(5)) == 200
    assert interval_timesteps(250) == [125, 375, 625, 875]
    with pytest.raises(ValueError, match="t_interval must be an int in 1..1000, got 0"):
        interval_timesteps(0)
    jobs = pair_jobs([10, 30], n_trials=2, randomize_noise=False, noise_period=3)
    assert len(jobs) == 6 * 4
    assert jobs.cond.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert jobs.image.tolist() == ([0] * 4 + [1] * 4) * 3
    assert jobs.t.tolist() == [10, 10, 30, 30] * 6
    assert jobs.noise.tolist() == [0, 1, 2, 0] * 6  # the bank's first rows reused every noise_period
    assert pair_jobs([10, 30], 2, True, 3).noise.tolist() == [0, 1, 2, 3] * 6


def test_sd_pixels_scores_equal_direct_unet(wino, tiny_sd_pixels, tmp_path, capsys):
    data = wino["folder"]
    result, lines = run(capsys, "--model_path", tiny_sd_pixels, "--data_dir", data, "--log_dir", tmp_path,
                        "--t_interval", 250, "--batch_size", 3, "--seed", 7)
    folder = tmp_path / "winoground" / f"sd_v{tiny_sd_pixels.name}_t250_1trials"
    assert result["folder"] == str(folder) and result["computed"] == 3 and result["skipped"] == 0
    examples = load_winoground(data)
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))  # batch_size rows, reused
    for ex in examples[1:2]:
        rec = load_record(folder / f"{ex.id}.pt")
        errors = direct_errors(tiny_sd_pixels, ex, [125, 375, 625, 875], 1, noise, [0, 1, 2, 0])
        torch.testing.assert_close(rec["errors"].double(), errors, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rec["scores"], -errors[:2].mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rec["uncond"], -errors[2].mean(dim=(1, 2)), rtol=1e-5, atol=1e-6)
        assert rec["t"].tolist() == [125, 375, 625, 875]
    scores = check_summary(result, lines, folder, examples)
    uncond = np.stack([load_record(folder / f"{ex.id}.pt")["uncond"].numpy() for ex in examples])
    normalized = winoground_scores(scores - uncond[:, None, :], TAGS)
    assert result["normalized"] == normalized
    assert "Overall image score (normalized): " + format_scores(normalized)[1].split(": ")[1] in lines
    assert len(lines) == 4 * 5  # Overall + 3 tags, each text, image, image (normalized), group, group (normalized)
    manifest = json.loads((folder / "manifest.json").read_text())["settings"]
    assert manifest["noise_period"] == 3 and manifest["noise"] == "seed 7" and manifest["img_size"] == 8


def test_sd_vae_zip_randomized_noise_equal_direct_unet(wino, tiny_sd, tmp_path, capsys):
    data = wino["zip"]
    result, lines = run(capsys, "--model_path", tiny_sd, "--data_dir", data, "--log_dir", tmp_path, "--extra", "zip",
                        "--t_interval", 500, "--n_trials", 2, "--randomize_noise", "--batch_size", 5, "--limit", 2)
    folder = tmp_path / "winoground_zip" / f"sd_v{tiny_sd.name}_t500_2trials_randnoise"
    assert result["folder"] == str(folder) and result["n"] == 2
    examples = load_winoground(data, limit=2)
    noise = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(0))  # one row per (t, trial)
    rec = load_record(folder / "1.pt")
    errors = direct_errors(tiny_sd, examples[1], [250, 750], 2, noise, [0, 1, 2, 3])
    torch.testing.assert_close(rec["errors"].double(), errors, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rec["scores"], -errors[:2].mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    check_summary(result, lines, folder, examples)
    assert sorted(p.name for p in folder.glob("*.pt")) == ["0.pt", "1.pt"]


def test_resume_skips_finished_examples(wino, tiny_sd_pixels, tmp_path, capsys, monkeypatch):
    args = ["--model_path", tiny_sd_pixels, "--data_dir", wino["folder"], "--log_dir", tmp_path, "--t_interval", 500]
    first, _ = run(capsys, *args)
    folder = Path(first["folder"])
    before = {p.name: (p.stat().st_mtime_ns, load_record(p)) for p in folder.glob("*.pt")}
    assert sorted(before) == ["0.pt", "1.pt", "2.pt"]
    (folder / "1.pt").unlink()  # as if interrupted before example 1 was saved

    calls = []
    evaluate = run_winoground.Scorer.evaluate
    monkeypatch.setattr(run_winoground.Scorer, "evaluate",
                        lambda self, latents, *a, **k: calls.append(latents.clone()) or evaluate(self, latents, *a, **k))
    second, lines = run(capsys, *args)
    assert second["computed"] == 1 and second["skipped"] == 2 and len(calls) == 1
    for name in ("0.pt", "2.pt"):
        assert (folder / name).stat().st_mtime_ns == before[name][0]  # not rewritten
    redone = load_record(folder / "1.pt")
    torch.testing.assert_close(redone["scores"], before["1.pt"][1]["scores"], rtol=0, atol=0)
    assert second["scores"] == first["scores"] and second["lines"] == first["lines"]

    with pytest.raises(ValueError, match=r"holds a run made with other settings \(1 differ: noise: folder \"seed 0\", command \"seed 1\"\)"):
        run_winoground.main([*map(str, args), "--seed", "1", "--no_progress"])


def test_other_captions_under_same_log_dir_refused(wino, tiny_sd_pixels, tmp_path, capsys, monkeypatch):
    """A second data folder whose captions differ does not resume the first one's records; the same folder does."""
    edited = _records()
    edited[1]["caption_1"] = "a dog bit?"  # one caption of example 1 edited, everything else the same
    other = write_winoground(tmp_path / "other", edited, _images())
    args = ["--model_path", tiny_sd_pixels, "--log_dir", tmp_path / "logs", "--t_interval", 500]
    first, _ = run(capsys, *args, "--data_dir", wino["folder"])
    folder = Path(first["folder"])
    assert first["computed"] == 3 and load_record(folder / "1.pt")["captions"] == ["a dog bit.", "a bit dog."]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}

    calls = []
    evaluate = run_winoground.Scorer.evaluate
    monkeypatch.setattr(run_winoground.Scorer, "evaluate",
                        lambda self, *a, **k: calls.append(1) or evaluate(self, *a, **k))
    with pytest.raises(SystemExit) as e:
        cli.run(run_winoground.main, [*map(str, args), "--data_dir", str(other), "--no_progress"], unit="examples")
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.fullmatch(rf"error: {re.escape(str(folder / '1.pt'))} was scored for example 1 with captions "
                        r"\['a dog bit\.', 'a bit dog\.'\], but the data now gives captions \['a dog bit\.', "
                        r"'a dog bit\?'\]: the data changed since this run began; delete that record to score the "
                        r"example again, or use another --log_dir or --extra\n", err), err
    assert not calls  # refused before anything was scored
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
    assert after == before  # every record and the results kept as they were, no claim left behind

    again, _ = run(capsys, *args, "--data_dir", wino["folder"])  # the same data resumes without recomputing
    assert again["computed"] == 0 and again["skipped"] == 3 and not calls
    assert again["scores"] == first["scores"] and again["lines"] == first["lines"]
    assert all((folder / name).stat().st_mtime_ns == before[name][0] for name in ("0.pt", "1.pt", "2.pt"))

    # a record written before captions were stored resumes under either copy; deleting the refused one rescores it
    legacy = {k: v for k, v in load_record(folder / "1.pt").items() if k != "captions"}
    save_record(legacy, folder / "1.pt")
    resumed, _ = run(capsys, *args, "--data_dir", other)
    assert resumed["computed"] == 0 and resumed["skipped"] == 3 and not calls
    (folder / "1.pt").unlink()
    rescored, _ = run(capsys, *args, "--data_dir", other)
    assert rescored["computed"] == 1 and rescored["skipped"] == 2 and calls
    assert load_record(folder / "1.pt")["captions"] == ["a dog bit.", "a dog bit?"]


# ---------------------------------------------------------------- CLIP and OpenCLIP


def test_clip_scores_equal_logits_per_image(wino, tiny_clip, tmp_path, capsys):
    from transformers import CLIPModel, CLIPProcessor

    data = wino["folder"]
    result, lines = run(capsys, "--model", "clip", "--model_path", tiny_clip, "--data_dir", data, "--log_dir", tmp_path)
    folder = tmp_path / "winoground" / f"clip_{tiny_clip.name}"
    assert result["folder"] == str(folder) and result["normalized"] is None
    examples = load_winoground(data)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    for ex in examples:
        inputs = processor(text=[ex.caption_0, ex.caption_1], images=[ex.open_image(0), ex.open_image(1)],
                           return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**inputs).logits_per_image  # (image, caption)
        rec = load_record(folder / f"{ex.id}.pt")
        assert set(rec) == {"id", "tag", "captions", "scores"}
        assert rec["captions"] == [ex.caption_0, ex.caption_1]  # what the record was scored on
        torch.testing.assert_close(rec["scores"], logits.T.double(), rtol=1e-5, atol=1e-6)  # [caption, image]
        assert rec["scores"][0, 0] != rec["scores"][1, 0]  # the two captions do score differently
    check_summary(result, lines, folder, examples)
    assert len(lines) == 4 * 3 and not any("normalized" in line for line in lines)


def test_clip_unavailable_is_one_line(wino, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    args = ["--model", "clip", "--data_dir", str(wino["folder"]), "--log_dir", str(tmp_path), "--no_progress"]
    with pytest.raises(FileNotFoundError, match=r"^cannot load CLIP model 'openai/clip-vit-large-patch14': .*"
                                                r"huggingface-cli download openai/clip-vit-large-patch14") as e:
        run_winoground.main(args)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"CLIP folder '.*nowhere' does not exist"):
        run_winoground.main(args + ["--model_path", str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match="unknown CLIP version 'ViT-X/1'; expected one of ViT-B/32"):
        run_winoground.main(args + ["--version", "ViT-X/1"])


class _FakeOpenClip(torch.nn.Module):
    """Stands in for an open_clip model: mean colour and caption length as 3-d features."""

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))

    def encode_image(self, pixels):
        return pixels.mean(dim=(2, 3))  # (B, 3)

    def encode_text(self, tokens):
        return torch.stack([tokens[:, 0], tokens[:, 1], tokens[:, 0] * tokens[:, 1] + 1.0], dim=1).float()


def test_openclip_path_and_missing_package(wino, tmp_path, capsys, monkeypatch):
    import torchvision.transforms as T

    calls = {}

    def create_model_and_transforms(arch, pretrained=None, device=None):
        calls["create"] = (arch, pretrained)
        return _FakeOpenClip(), None, T.ToTensor()

    def get_tokenizer(arch):
        return lambda texts: torch.tensor([[len(s), s.count("o") + 1.0] for s in texts])

    fake = types.SimpleNamespace(create_model_and_transforms=create_model_and_transforms, get_tokenizer=get_tokenizer)
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    data = wino["folder"]
    result, lines = run(capsys, "--model", "openclip", "--data_dir", data, "--log_dir", tmp_path)
    assert calls["create"] == ("ViT-H-14", "laion2b_s32b_b79k")
    folder = tmp_path / "winoground" / "openclip_ViT-H-14"
    examples = load_winoground(data)
    for ex in examples:
        img = torch.stack([T.ToTensor()(ex.open_image(k)).mean(dim=(1, 2)) for k in (0, 1)])
        txt = torch.tensor([[len(c), c.count("o") + 1.0, len(c) * (c.count("o") + 1.0) + 1.0]
                            for c in (ex.caption_0, ex.caption_1)])
        img, txt = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
        expected = (10.0 * txt @ img.T).double()  # [caption, image]
        torch.testing.assert_close(load_record(folder / f"{ex.id}.pt")["scores"], expected, rtol=1e-5, atol=1e-5)
    check_summary(result, lines, folder, examples)

    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    with pytest.raises(ImportError, match=r"needs the open_clip package: pip install open_clip_torch .*\[clip\]"):
        run_winoground.main(["--model", "openclip", "--data_dir", str(data), "--log_dir", str(tmp_path / "x"),
                             "--no_progress"])


TINY_OPENCLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_openclip_real_package_tiny_model(wino, tmp_path, capsys):
    """The OpenCLIP scorer through the real open_clip: a tiny architecture registered here, random weights."""
    open_clip = pytest.importorskip("open_clip")
    config_dir = tmp_path / "open_clip_configs"
    config_dir.mkdir()
    (config_dir / "dc-tiny-test.json").write_text(json.dumps(TINY_OPENCLIP))
    open_clip.add_model_config(config_dir)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("dc-tiny-test", pretrained=None)
    with torch.no_grad():  # a non-trivial temperature, so the scale is tested too
        model.logit_scale.fill_(float(np.log(7.0)))
    ckpt = tmp_path / "tiny_openclip.pt"
    torch.save(model.state_dict(), ckpt)

    data = wino["folder"]
    result, lines = run(capsys, "--model", "openclip", "--version", "dc-tiny-test", "--model_path", ckpt,
                        "--data_dir", data, "--log_dir", tmp_path / "logs")
    folder = tmp_path / "logs" / "winoground" / "openclip_tiny_openclip.pt"
    assert Path(result["folder"]) == folder and result["computed"] == len(CAPTIONS)
    tokenizer = open_clip.get_tokenizer("dc-tiny-test")
    model.eval()
    for ex in load_winoground(data):
        with torch.no_grad():
            img = model.encode_image(torch.stack([preprocess(ex.open_image(k)) for k in (0, 1)]))
            txt = model.encode_text(tokenizer([ex.caption_0, ex.caption_1]))
        img, txt = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
        expected = (7.0 * txt @ img.T).double()  # [caption, image]
        got = load_record(folder / f"{ex.id}.pt")["scores"]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(got, got.T)  # the two captions really score differently
    check_summary(result, lines, folder, load_winoground(data))


# ---------------------------------------------------------------- data


def test_missing_data_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("WINOGROUND_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"no Winoground data given: pass --data_dir DIR or set WINOGROUND_DIR"):
        run_winoground.main(["--log_dir", str(tmp_path)])
    missing = tmp_path / "winoground"
    with pytest.raises(FileNotFoundError, match=r"Winoground data directory .*winoground does not exist; .*gated") as e:
        run_winoground.main(["--data_dir", str(missing), "--log_dir", str(tmp_path)])
    assert "\n" not in str(e.value)
    monkeypatch.setenv("WINOGROUND_DIR", str(missing))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_winoground.main(["--log_dir", str(tmp_path)])  # the env default is used


def test_make_digits_winoground_deterministic(tmp_path, capsys):
    from diffusion_classifier.data.digits import load_digits_arrays

    make = load_script("scripts/make_digits_winoground.py")
    make.main(["--out", str(tmp_path / "a"), "--n", "12", "--seed", "3"])
    make.main(["--out", str(tmp_path / "b"), "--n", "12", "--seed", "3", "--zip"])
    make.main(["--out", str(tmp_path / "c"), "--n", "12", "--seed", "4"])
    a, b = load_winoground(tmp_path / "a"), load_winoground(tmp_path / "b")
    assert [e.id for e in a] == list(range(12)) and a == b
    assert (tmp_path / "a" / "examples.jsonl").read_text() == (tmp_path / "b" / "examples.jsonl").read_text()
    assert (tmp_path / "a" / "examples.jsonl").read_text() != (tmp_path / "c" / "examples.jsonl").read_text()
    images, labels = load_digits_arrays("test")
    raw = [json.loads(line) for line in (tmp_path / "a" / "examples.jsonl").read_text().splitlines()]
    for ex, ex_b, r in zip(a, b, raw):
        d0, d1 = r["digits"]
        assert d0 != d1 and ex.collapsed_tag == "Object"
        assert (ex.caption_0, ex.caption_1) == (f"a photo of the number: '{d0}'.", f"a photo of the number: '{d1}'.")
        for k, (d, idx) in enumerate(zip(r["digits"], r["test_indices"])):
            assert labels[idx] == d
            pixels = np.asarray(ex.open_image(k))  # (8, 8, 3)
            assert pixels.shape == (8, 8, 3)
            np.testing.assert_array_equal(pixels, np.repeat(images[idx][:, :, None], 3, axis=2))
            np.testing.assert_array_equal(pixels, np.asarray(ex_b.open_image(k)))


@pytest.mark.skipif(not (ROOT / "diffusion_classifier" / "tiny_models" / "digits-sd" / "model_index.json").is_file(),
                    reason="the shipped tiny digits model is not in this checkout")
def test_shipped_tiny_model_on_digits_winoground(tmp_path, capsys):
    make = load_script("scripts/make_digits_winoground.py")
    make.main(["--out", str(tmp_path / "data"), "--n", "6", "--seed", "0"])
    result, lines = run(capsys, "--version", "tiny", "--data_dir", tmp_path / "data", "--log_dir", tmp_path / "logs",
                        "--t_interval", 200)
    assert Path(result["folder"]).name == "sd_vtiny_t200_1trials"
    overall, normalized = result["scores"]["Overall"], result["normalized"]["Overall"]
    # each image prefers the caption naming its digit; minus the empty-prompt score, each caption its image
    assert overall["text"]["score"] == 100.0 and normalized["image"]["score"] == 100.0
    assert lines[0] == "Overall text score: 100.0 +/- 0.0"
