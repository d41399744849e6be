"""One run per model family through its entry script: the folder, manifest and record layout the scripts have
always written (frozen here as strings and integers), and every stored error equal to a plain computation.

The plain computation forms x_t with diffusers' own schedulers (add_noise, scale_noise) and calls the
denoiser once per job (test_families.plain_errors for the text-to-image families).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval_prob_adaptive
import eval_prob_dit
from conftest import build_tiny_dit, build_tiny_sd
from diffusion_classifier.families import SD_VERSIONS, load_model
from diffusion_classifier.records import load_record
from family_builders import build_flux, build_sd3, build_sdxl
from test_families import CLASSIDX, CSV, IMAGES, PROMPTS, TS, digit_pixels, plain_errors

LABELS = {0: 5, 5: 7}  # the digits test split's labels of IMAGES
FLOW = {"objective": "flow", "error_space": "eps", "flow_grid": "timesteps"}
# family -> (builder of its folder or a shipped --version, the folder name the script gives the run, extra manifest keys)
TEXT_FAMILIES = {
    "sd": (build_tiny_sd, "vsd_1trials_1keep_4samples_8", {}),
    "sdxl": (build_sdxl, "vsdxl_1trials_1keep_4samples_8", {}),
    "sd3": (build_sd3, "vsd3_1trials_1keep_4samples_8", FLOW),
    "flux": (build_flux, "vflux_1trials_1keep_4samples_8", FLOW),
    "tiny-flow": ("tiny-flow", "vtiny-flow_1trials_1keep_4samples_8", FLOW),
}


def _inputs(tmp_path: Path, shape) -> dict[str, Path]:
    """Prompts CSV, subset and a saved noise bank of 4 rows (one per timestep) under tmp_path."""
    paths = {"prompts": tmp_path / "prompts.csv", "subset": tmp_path / "subset.npy", "noise": tmp_path / "noise.pt"}
    paths["prompts"].write_text(CSV)
    np.save(paths["subset"], np.array(IMAGES))
    torch.save(torch.randn(4, *shape, generator=torch.Generator().manual_seed(3)), paths["noise"])
    return paths


def _settings(folder: Path, tmp_path: Path) -> dict:
    text = (folder / "manifest.json").read_text().replace(str(tmp_path), "TMP")
    return json.loads(text)["settings"]


@pytest.mark.parametrize("family", list(TEXT_FAMILIES))
def test_text_to_image_run_keeps_its_layout_and_equals_plain_errors(family, tmp_path):
    build, name, objective_keys = TEXT_FAMILIES[family]
    source = SD_VERSIONS[build] if isinstance(build, str) else str(build(tmp_path / family))
    flags = ["--version", build] if isinstance(build, str) else ["--model", source]
    paths = _inputs(tmp_path, load_model(source).latent_shape(8))
    out = eval_prob_adaptive.main([*flags, "--dataset", "digits", "--split", "test", "--img_size", "8",
                                   "--prompt_path", str(paths["prompts"]), "--subset_path", str(paths["subset"]),
                                   "--noise_path", str(paths["noise"]), "--log_dir", str(tmp_path / "logs"),
                                   "--to_keep", "1", "--n_samples", "4", "--batch_size", "5", "--no_progress"])
    folder = Path(out["folder"])
    assert folder == tmp_path / "logs" / "digits" / name
    source = source.replace(str(tmp_path), "TMP")
    assert _settings(folder, tmp_path) == {
        "model": source, "dataset": "digits", "split": "test", "img_size": 8, "n_trials": 1, "to_keep": [1],
        "n_samples": [4], "loss": "l2", "interpolation": "bicubic", "noise": "TMP/noise.pt",
        "prompts": [[p, c] for p, c in zip(PROMPTS, CLASSIDX)], "schedule": "reference", "z": None, "min_samples": None,
        "subset": "TMP/subset.npy", "corruption": None, "severity": None, "delta": None, "variance": None,
        "timestep_weights": None, **objective_keys}
    assert sorted(p.name for p in folder.iterdir()) == ["000.pt", "005.pt", "manifest.json"]
    noise = torch.load(paths["noise"], weights_only=True)
    for idx in IMAGES:
        rec = load_record(folder / f"{idx:03d}.pt")
        assert sorted(rec) == ["errors", "label", "pred"] and rec["label"] == LABELS[idx]
        assert sorted(rec["errors"]) == [0, 1, 2]
        plain = plain_errors(family, Path(source.replace("TMP", str(tmp_path))), digit_pixels(idx), noise, {})
        for p in range(len(PROMPTS)):
            assert rec["errors"][p]["t"].tolist() == TS and rec["errors"][p]["pred_errors"].dtype == torch.float32
            torch.testing.assert_close(rec["errors"][p]["pred_errors"].double(), torch.tensor(plain[p], dtype=torch.float64),
                                       rtol=2e-4, atol=1e-6)
        assert rec["pred"] == CLASSIDX[int(np.argmin([np.mean(e) for e in plain]))]  # the winning row's classidx


@torch.no_grad()
def plain_dit(folder: Path, pixels: torch.Tensor, noise: torch.Tensor, classes) -> list[list[float]]:
    """errors[class][k] of a pixel-space DiT: ε̂ (the first C output channels) against noise[k] at TS[k]."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    net = DiTTransformer2DModel.from_pretrained(folder / "transformer").eval()
    sched = DDPMScheduler.from_pretrained(folder / "scheduler")
    errs = [[0.0] * len(TS) for _ in classes]
    for j, c in enumerate(classes):
        for k, t in enumerate(TS):
            tt = torch.tensor([t])
            x_t = sched.add_noise(pixels[None], noise[k : k + 1], tt)
            out = net(x_t, timestep=tt, class_labels=torch.tensor([c])).sample[:, :3]
            errs[j][k] = float(F.mse_loss(out, noise[k : k + 1]))
    return errs


def test_dit_runs_keep_their_layout_and_equal_plain_errors(tmp_path):
    folder = build_tiny_dit(tmp_path / "dit", num_classes=10)
    paths = _inputs(tmp_path, (3, 8, 8))
    common = ["--model", str(folder), "--dataset", "digits", "--split", "test", "--subset_path", str(paths["subset"]),
              "--noise_path", str(paths["noise"]), "--log_dir", str(tmp_path / "logs"), "--no_progress"]
    adaptive = eval_prob_dit.main([*common, "--to_keep", "1", "--n_samples", "4", "--batch_size", "7"])
    per_class = eval_prob_dit.main([*common, "--cls", "9", "--t_interval", "250", "--randomize_noise", "--batch_size", "3"])
    assert Path(adaptive["folder"]) == tmp_path / "logs" / "digits" / "dit_1trials_1keep_4samples"
    assert Path(per_class["folder"]) == tmp_path / "logs" / "digits" / "dit_250int_1trials_randnoise"
    base = {"model": "TMP/dit", "vae": None, "dataset": "digits", "split": "test", "img_size": 8, "n_trials": 1,
            "noise": "TMP/noise.pt", "corruption": None, "severity": None}
    assert _settings(Path(adaptive["folder"]), tmp_path) == {
        **base, "to_keep": [1], "n_samples": [4], "loss": "l2", "schedule": "reference", "z": None, "min_samples": None,
        "null_normalize": False, "classes": list(range(10)), "delta": None, "variance": None, "timestep_weights": None}
    assert _settings(Path(per_class["folder"]), tmp_path) == {
        **base, "t_interval": 250, "kind": "l2", "randomize_noise": True, "batch_size": None}
    noise = torch.load(paths["noise"], weights_only=True)
    for idx in IMAGES:
        plain = plain_dit(folder, digit_pixels(idx), noise, range(10))
        rec = load_record(Path(adaptive["folder"]) / f"{idx:03d}.pt")
        assert sorted(rec) == ["errors", "label", "pred"] and rec["label"] == LABELS[idx]
        for c in range(10):
            assert rec["errors"][c]["t"].tolist() == TS
            torch.testing.assert_close(rec["errors"][c]["pred_errors"].double(), torch.tensor(plain[c], dtype=torch.float64),
                                       rtol=2e-4, atol=1e-6)
        assert rec["pred"] == int(np.argmin([np.mean(e) for e in plain]))
        rec = load_record(Path(per_class["class_folder"]) / f"{idx:03d}.pt")
        assert sorted(rec) == ["cls", "data", "kind", "label", "t"] and (rec["kind"], rec["cls"]) == ("l2", 9)
        assert rec["t"].tolist() == TS and rec["label"] == LABELS[idx] and rec["data"].shape == (4, 1)
        torch.testing.assert_close(rec["data"][:, 0].double(), torch.tensor(plain[9], dtype=torch.float64),
                                   rtol=2e-4, atol=1e-6)
