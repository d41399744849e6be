"""eval_prob_adaptive end to end on tiny pipelines, against an independent plain re-implementation."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_prob_adaptive
from conftest import load_script
from diffusion_classifier.records import load_record

ROOT = Path(__file__).resolve().parents[1]
CSV = (  # classes 5, 6, 7 of the images in subset.npy, and two prompts for class 6
    "prompt,classname,classidx\n"
    "five,five,5\n"
    "six,six,6\n"
    "a six,six,6\n"
    "seven,seven,7\n"
    "eight,eight,8\n"
)


@pytest.fixture
def setup(tmp_path, tiny_sd):
    (tmp_path / "prompts.csv").write_text(CSV)
    np.save(tmp_path / "subset.npy", np.array([0, 5, 37, 71]))
    return tmp_path


def base_args(tmp_path, model, *extra):
    return ["--model", str(model), "--dataset", "digits", "--split", "test", "--prompt_path", str(tmp_path / "prompts.csv"),
            "--subset_path", str(tmp_path / "subset.npy"), "--log_dir", str(tmp_path / "logs"), "--img_size", "8",
            "--to_keep", "2", "1", "--n_samples", "4", "8", "--no_progress", *extra]


def plain_reference(model_dir: Path, image_pixels: torch.Tensor, prompts: list[str], noise: torch.Tensor,
                    to_keep, n_samples, n_trials=1, loss="l2"):
    """The reference's algorithm written out plainly, one denoiser call per (prompt, t, trial)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet").eval()
    vae = AutoencoderKL.from_pretrained(model_dir / "vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder").eval()
    tok = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    alphas = DDPMScheduler.from_pretrained(model_dir / "scheduler").alphas_cumprod
    T = 1000
    with torch.no_grad():
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        embeds = text_encoder(ids)[0]
        latent = vae.encode(image_pixels[None]).latent_dist.mean[0] * vae.config.scaling_factor
        M = max(n_samples)
        grid = list(range(T // M // 2, T, T // M))[:M]
        remaining = list(range(len(prompts)))
        data = {}
        seen = []
        for n, keep in zip(n_samples, to_keep):
            cur = grid[len(grid) // n // 2 :: len(grid) // n][:n]
            cur = [t for t in cur if t not in seen]
            for p in remaining:
                for t_idx, t in enumerate(cur, start=len(seen)):
                    for trial in range(n_trials):
                        eps = noise[n_trials * t_idx + trial]
                        a = alphas[t]
                        x_t = latent * a.sqrt() + eps * (1 - a).sqrt()
                        out = unet(x_t[None], torch.tensor([t]), encoder_hidden_states=embeds[p : p + 1]).sample[0]
                        err = ((out - eps) ** 2).mean() if loss == "l2" else (out - eps).abs().mean()
                        d = data.setdefault(p, {"t": [], "pred_errors": []})
                        d["t"].append(t)
                        d["pred_errors"].append(float(err))
            seen += cur
            means = [np.mean(data[p]["pred_errors"]) for p in remaining]
            order = np.argsort(means, kind="stable")[:keep]
            remaining = [remaining[i] for i in order]
        return remaining[0], data


def test_matches_plain_reference(setup, tiny_sd):
    from torchvision import transforms

    from diffusion_classifier.data.digits import DigitsDataset

    tmp = setup
    noise = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    torch.save(noise, tmp / "noise.pt")
    out = eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--noise_path", str(tmp / "noise.pt"), "--batch_size", "5"))
    folder = Path(out["folder"])
    assert folder.name == f"v{tiny_sd.name}_1trials_2_1keep_4_8samples_8"  # the reference's naming, size suffix
    files = sorted(p.name for p in folder.glob("*.pt"))
    assert files == ["000.pt", "005.pt", "037.pt", "071.pt"]  # 360 test images -> width 3

    prompts = [line.split(",")[0] for line in CSV.strip().splitlines()[1:]]
    classidx = [int(line.rsplit(",", 1)[1]) for line in CSV.strip().splitlines()[1:]]
    tf = transforms.Compose([transforms.Resize(8, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(8), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ds = DigitsDataset("test")
    for idx in (0, 5, 37, 71):
        rec = load_record(folder / f"{idx:03d}.pt")
        img, label = ds[idx]
        pred_prompt, data = plain_reference(tiny_sd, tf(img), prompts, noise, [2, 1], [4, 8])
        assert rec["label"] == label
        assert rec["pred"] == classidx[pred_prompt]
        assert set(rec["errors"]) == set(data)
        for p, d in data.items():
            assert rec["errors"][p]["t"].tolist() == d["t"]
            torch.testing.assert_close(rec["errors"][p]["pred_errors"], torch.tensor(d["pred_errors"]), rtol=1e-4, atol=1e-6)
        # pruned prompts were evaluated in stage 1 only: 4 timesteps; the two survivors on all 8
        assert sorted(len(d["t"]) for d in data.values()) == [4, 4, 4, 8, 8]


def test_image_packing_gives_same_numbers(setup, tiny_sd):
    tmp = setup
    a = Path(eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--log_dir", str(tmp / "a"), "--batch_size", "3"))["folder"])
    b = Path(eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--log_dir", str(tmp / "b"), "--batch_size", "64",
                                               "--image_batch", "4"))["folder"])
    for f in sorted(a.glob("*.pt")):
        ra, rb = load_record(f), load_record(b / f.name)
        assert ra["pred"] == rb["pred"]
        for p in ra["errors"]:
            torch.testing.assert_close(ra["errors"][p]["pred_errors"], rb["errors"][p]["pred_errors"], rtol=1e-5, atol=1e-6)


def test_seeded_runs_are_reproducible_and_manifest_guards_settings(setup, tiny_sd):
    tmp = setup
    f1 = Path(eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--log_dir", str(tmp / "r1"), "--seed", "7"))["folder"])
    f2 = Path(eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--log_dir", str(tmp / "r2"), "--seed", "7"))["folder"])
    for f in f1.glob("*.pt"):
        assert torch.equal(load_record(f)["errors"][0]["pred_errors"], load_record(f2 / f.name)["errors"][0]["pred_errors"])
    with pytest.raises(ValueError, match="other settings.*noise"):
        eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--log_dir", str(tmp / "r1"), "--seed", "8"))


def test_resume_after_interruption(setup, tiny_sd, monkeypatch):
    tmp = setup
    from diffusion_classifier import engine

    real = engine.Scorer.evaluate
    calls = {"n": 0}

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # image 3's first stage: two images finished, the third is half done
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(engine.Scorer, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):  # one image per call, so the records reach the disk image by image
        eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--image_batch", "1"))
    monkeypatch.setattr(engine.Scorer, "evaluate", real)
    folder = next((tmp / "logs" / "digits").iterdir())
    finished = sorted(p.name for p in folder.glob("*.pt"))
    assert finished == ["000.pt", "005.pt"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # no half-written file left
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}
    out = eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--load_stats"))
    assert out["done"] == 2 and out["skipped"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt") if p.name in mtimes} == mtimes
    # the resumed folder equals an uninterrupted run
    clean = Path(eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--log_dir", str(tmp / "clean")))["folder"])
    for f in clean.glob("*.pt"):
        assert load_record(f)["pred"] == load_record(folder / f.name)["pred"]


def test_shards_cover_every_index_once(setup, tiny_sd):
    tmp = setup
    done = []
    for w in range(3):
        out = eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--n_workers", "3", "--worker_idx", str(w)))
        done.append(out["done"])
    assert done == [2, 1, 1]  # indices [0, 5, 37, 71] split as [0, 71], [5], [37]
    folder = next((tmp / "logs" / "digits").iterdir())
    assert sorted(int(p.stem) for p in folder.glob("*.pt")) == [0, 5, 37, 71]


@pytest.mark.slow  # launches a script as a separate process
@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process launch")
def test_accelerate_launch_splits_images(setup, tiny_sd):
    tmp = setup
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "eval_prob_adaptive.py"), *base_args(tmp, tiny_sd)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    folder = next((tmp / "logs" / "digits").iterdir())
    assert sorted(int(p.stem) for p in folder.glob("*.pt")) == [0, 5, 37, 71]
    # each process reports its own share: 2 + 2 images, none twice
    # (found anywhere in stdout: the two processes' lines may interleave on one line under load)
    counts = [int(n) for n in re.findall(r"\((\d+) classified now", res.stdout)]
    assert sorted(counts) == [2, 2]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--to_keep", "2", "1", "--n_samples", "4"], "same length"),
        (["--to_keep", "2", "2", "--n_samples", "4", "8"], "last --to_keep must be 1"),
        (["--to_keep", "9", "1", "--n_samples", "4", "8"], "larger than the 5 candidates"),
        (["--to_keep", "2", "1", "--n_samples", "4", "1001"], "at most the 1000"),
        (["--to_keep", "2", "1", "--n_samples", "8", "4"], "must not decrease"),
        (["--n_workers", "2", "--worker_idx", "2"], "--worker_idx must be in 0..1"),
    ],
)
def test_bad_flags(setup, tiny_sd, extra, message):
    with pytest.raises(ValueError, match=message):
        eval_prob_adaptive.main(base_args(setup, tiny_sd) + extra)


def test_bad_inputs(setup, tiny_sd, tmp_path, capsys):
    tmp = setup
    (tmp / "bad.csv").write_text("prompt,classidx\nx,0\n")
    with pytest.raises(ValueError, match="classname"):
        eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--prompt_path", str(tmp / "bad.csv")))
    (tmp / "big.csv").write_text("prompt,classname,classidx\nx,x,0\ny,y,12\n")
    with pytest.raises(ValueError, match="12"):
        eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--prompt_path", str(tmp / "big.csv"), "--to_keep", "1", "--n_samples", "4"))
    torch.save(torch.zeros(8, 4, 8, 8), tmp / "wrong.pt")
    with pytest.raises(ValueError, match=r"expected \(N, 4, 4, 4\)"):
        eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--noise_path", str(tmp / "wrong.pt")))
    torch.save(torch.zeros(3, 4, 4, 4), tmp / "short.pt")
    with pytest.raises(ValueError, match="3 rows, the schedule needs at least 8"):
        eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--noise_path", str(tmp / "short.pt")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        eval_prob_adaptive.main(base_args(tmp, tmp / "no_such_model"))
    with pytest.raises(SystemExit):
        eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--dataset", "nosuchset"))
    assert "invalid choice: 'nosuchset'" in capsys.readouterr().err
    # nothing written by the failed runs is lost or half-made
    assert not list((tmp / "logs").rglob("*.tmp")) if (tmp / "logs").exists() else True


def test_python_api_matches_script(setup, tiny_sd):
    from diffusion_classifier import DiffusionClassifier
    from diffusion_classifier.data.digits import DigitsDataset

    tmp = setup
    noise = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    torch.save(noise, tmp / "noise.pt")
    folder = Path(eval_prob_adaptive.main(base_args(tmp, tiny_sd, "--noise_path", str(tmp / "noise.pt")))["folder"])
    clf = DiffusionClassifier.from_pretrained(str(tiny_sd))
    prompts = [line.split(",")[0] for line in CSV.strip().splitlines()[1:]]
    ds = DigitsDataset("test")
    preds = clf.classify([ds[i][0] for i in (0, 5)], prompts, to_keep=[2, 1], n_samples=[4, 8], noise=noise, img_size=8)
    for p, idx in zip(preds, (0, 5)):
        rec = load_record(folder / f"{idx:03d}.pt")
        torch.testing.assert_close(p.mean_errors[p.pred], rec["errors"][p.pred]["pred_errors"].mean())
        assert abs(float(p.probs.sum()) - 1) < 1e-5 and int(p.probs.argmax()) == p.pred


def test_save_noise_is_the_reference_bank(tmp_path):
    mod = load_script("scripts/save_noise.py")
    out = mod.main(["--img_size", "64", "--out", str(tmp_path / "n.pt")])
    bank = torch.load(out, weights_only=True)
    torch.manual_seed(42)
    assert torch.equal(bank, torch.randn(1024, 4, 8, 8))
    with pytest.raises(ValueError, match="divisible by 8"):
        mod.main(["--img_size", "100", "--out", str(tmp_path / "m.pt")])


def test_print_acc_on_crafted_records(tmp_path, capsys):
    from diffusion_classifier.records import save_record

    # labels 0,0,1,1,1 ; preds 0,1,1,1,0 -> top-1 3/5 = 60%, per class 50% and 66.7% -> mean 58.33%
    for i, (p, y) in enumerate([(0, 0), (1, 0), (1, 1), (1, 1), (0, 1)]):
        save_record({"errors": {}, "pred": p, "label": y}, tmp_path / f"{i}.pt")
    (tmp_path / "9.pt").write_bytes(b"not a record")
    res = load_script("scripts/print_acc.py").main([str(tmp_path)])[0]
    assert res["n"] == 5 and res["unreadable"] == 1
    assert res["top1"] == pytest.approx(60.0) and res["mean_per_class"] == pytest.approx(175 / 3)
    out = capsys.readouterr().out
    assert "top-1 accuracy: 60.00%" in out and "mean per-class accuracy: 58.33%" in out and "skipped 1 unreadable" in out


def test_print_acc_pairs_each_pred_with_its_own_label(tmp_path):
    """A record without a label (or not a dict) is unreadable as a whole: it never shifts the later preds and labels."""
    from diffusion_classifier.records import save_record

    save_record({"errors": {}, "pred": 5}, tmp_path / "0.pt")  # no label
    save_record({"errors": {}, "pred": 1, "label": "one"}, tmp_path / "1.pt")  # a label that is no number
    save_record(torch.zeros(3), tmp_path / "2.pt")  # not a dict
    for i, y in enumerate([0, 1, 2, 3], start=3):
        save_record({"errors": {}, "pred": y, "label": y}, tmp_path / f"{i}.pt")
    res = load_script("scripts/print_acc.py").main([str(tmp_path), "--no_table"])[0]
    assert (res["n"], res["unreadable"], res["top1"]) == (4, 3, pytest.approx(100.0))


def test_print_acc_refuses_a_per_class_dit_folder(tmp_path):
    from diffusion_classifier.records import save_record

    for c in (0, 1):
        save_record({"kind": "l2", "data": torch.zeros(2, 1), "t": torch.tensor([1, 2]), "cls": c, "label": 0},
                    tmp_path / str(c) / "000.pt")
    with pytest.raises(ValueError, match=r"class folders \(<cls>/<idx>\.pt\) of eval_prob_dit\.py --cls runs.*print_dit_acc"):
        load_script("scripts/print_acc.py").main([str(tmp_path)])
    (tmp_path / "empty").mkdir()  # an empty folder (a run just started) is read as one: 0 records
    assert load_script("scripts/print_acc.py").main([str(tmp_path / "empty")])[0]["n"] == 0


def test_another_image_folder_never_resumes_the_records_of_the_first(tmp_path, tiny_sd):
    """Records are by index: a second image folder under the same --log_dir is refused, not scored by the first's records."""
    from diffusion_classifier.data.digits import DigitsDataset

    test = DigitsDataset("test")
    for name, offset in (("a", 0), ("b", 1)):
        for c in ("five", "six"):
            (tmp_path / name / c).mkdir(parents=True)
        picks = {5: [], 6: []}
        for i in range(len(test)):
            img, label = test[i]
            if label in picks and len(picks[label]) < 2 + offset:
                picks[label].append(img)
        for label, c in ((5, "five"), (6, "six")):
            for j, img in enumerate(picks[label][offset:]):  # the same file names, other images
                img.save(tmp_path / name / c / f"img{j}.png")
    (tmp_path / "p.csv").write_text("prompt,classname,classidx\nfive,five,0\nsix,six,1\n")
    args = lambda root: ["--model", str(tiny_sd), "--dataset", "imagefolder", "--dataset_root", str(tmp_path / root),  # noqa: E731
                         "--prompt_path", str(tmp_path / "p.csv"), "--log_dir", str(tmp_path / "logs"),
                         "--to_keep", "1", "--n_samples", "2", "--no_progress"]
    assert eval_prob_adaptive.main(args("a"))["done"] == 4
    with pytest.raises(ValueError, match=r"holds records of other images \(image list [0-9a-f]+; the dataset now gives"):
        eval_prob_adaptive.main(args("b"))
    again = eval_prob_adaptive.main(args("a"))
    assert again["done"] == 0 and again["skipped"] == 4
