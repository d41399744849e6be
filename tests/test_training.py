"""Training of the tiny models (diffusion_classifier/training): reproducible for a seed, resumable exactly from a
checkpoint, over any training data; and the new kinds (v-prediction digits-sd, the SD3-layout flow model) write folders the loaders read with the
right objective and the conditioning the SD3 pipeline computes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from diffusion_classifier.errors import InputError
from diffusion_classifier.training import dit, flow, sd
from diffusion_classifier.training.common import Checkpointing, TrainingPaused


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under folder, by file and name."""
    from safetensors.torch import load_file

    return {f"{f.relative_to(folder)}:{k}": v for f in sorted(folder.rglob("*.safetensors")) for k, v in load_file(f).items()}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


TINY = {  # kind -> (train function, its keyword arguments for a few-second run)
    "sd": (sd.train_sd, dict(steps=6, batch=8, lr=1e-3, beta_schedule="scaled_linear", seed=0, channels=(8, 16))),
    "dit": (dit.train_dit, dict(steps=6, batch=8, lr=1e-3, beta_schedule="scaled_linear", seed=0, patch=4, heads=2,
                                head_dim=8, layers=1)),
    "flow": (flow.train_flow, dict(steps=6, batch=8, lr=1e-3, shift=1.0, seed=0, patch=4, heads=2, head_dim=8, layers=1)),
}


@pytest.mark.parametrize("kind", list(TINY))
def test_same_seed_gives_the_same_weights_and_another_seed_others(tmp_path, kind):
    train, kw = TINY[kind]
    train(tmp_path / "a", **kw)
    train(tmp_path / "b", **kw)
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    train(tmp_path / "c", **{**kw, "seed": 1})
    wa, wc = weights(tmp_path / "a"), weights(tmp_path / "c")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("kind", ["sd", "dit"])
def test_a_run_paused_and_resumed_equals_an_uninterrupted_run(tmp_path, kind):
    train, kw = TINY[kind]
    stats = train(tmp_path / "whole", **kw)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TrainingPaused) as paused:
        train(tmp_path / "resumed", **kw, checkpoint=Checkpointing(path, {"kind": kind}, stop_at=2))
    assert paused.value.step == 2 and path.is_file()
    state = torch.load(path, weights_only=True)  # loads without unpickling code
    assert state["step"] == 2 and state["settings"] == {"kind": kind}
    with pytest.raises(TrainingPaused):  # a second leg: resumes at 2, pauses at 4
        train(tmp_path / "resumed", **kw, checkpoint=Checkpointing(path, {"kind": kind}, resume=True, stop_at=4))
    resumed = train(tmp_path / "resumed", **kw, checkpoint=Checkpointing(path, {"kind": kind}, resume=True))
    assert_same_weights(tmp_path / "whole", tmp_path / "resumed")
    assert resumed["loss"] == stats["loss"]  # the loss averages travel in the checkpoint too
    with pytest.raises(InputError, match="other settings"):
        train(tmp_path / "other", **kw, checkpoint=Checkpointing(path, {"kind": "other"}, resume=True))
    with pytest.raises(TrainingPaused) as timed:  # a time limit counts this run's time: 0 s stops after one step
        train(tmp_path / "timed", **kw, checkpoint=Checkpointing(tmp_path / "t.pt", time_limit_s=0.0))
    assert timed.value.step == 1


def test_digits_tokenizer_is_the_shipped_one_and_fashion_captions_encode_word_by_word(tmp_path):
    from transformers import CLIPTokenizer

    from diffusion_classifier.training.common import build_tokenizer, check_tokenizer
    from diffusion_classifier.training.data import training_data

    build_tokenizer(tmp_path / "digits")
    shipped = REPO / "diffusion_classifier" / "tiny_models" / "digits-sd" / "tokenizer"
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "digits" / name).read_bytes() == (shipped / name).read_bytes()
    fashion = training_data("fashion_mnist")
    tok = build_tokenizer(tmp_path / "fashion", fashion)  # checks every caption (raises otherwise)
    check_tokenizer(CLIPTokenizer.from_pretrained(tmp_path / "fashion"), fashion)
    ids = tok("a blurry photo of a pullover.").input_ids
    assert len(ids) == 9  # bos, 6 words, ".", eos
    assert fashion.captions_for(9)[0] == "a blurry photo of a ankle boot."  # the prompts CSV's wording
    assert fashion.num_classes == 10 and fashion.size == 28


@pytest.mark.slow  # launches a script as a separate process
def test_script_refuses_to_overwrite_a_checkpoint_and_is_interrupted_into_one(tmp_path):
    args = [sys.executable, str(REPO / "scripts" / "train_tiny_models.py"), "--model", "sd", "--steps", "400",
            "--batch", "4", "--channels", "8", "16", "--out", str(tmp_path / "out"), "--checkpoint-dir",
            str(tmp_path / "ck"), "--checkpoint-every", "0"]  # a checkpoint after every step: shows the loop runs
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "ck" / "digits-sd.pt").is_file() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "checkpoint" in err.strip().splitlines()[-1] and "--resume" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    state = torch.load(tmp_path / "ck" / "digits-sd.pt", weights_only=True)
    assert 0 < state["step"] < 400
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume" in again.stderr.strip().splitlines()[-1]
    assert "Traceback" not in again.stderr
    assert torch.load(tmp_path / "ck" / "digits-sd.pt", weights_only=True)["step"] == state["step"]  # untouched


def test_v_prediction_target_is_diffusers_velocity_and_the_variant_trains_a_v_pipeline(tmp_path):
    from diffusion_classifier.training.ddpm import DdpmNoising, make_scheduler, training_objective

    scheduler = make_scheduler("scaled_linear", "fixed_small", clip_sample=False, steps_offset=1,
                               prediction_type="v_prediction")
    objective = training_objective(scheduler)  # the library's DDPMObjective on the scheduler's betas
    g = torch.Generator().manual_seed(0)
    x0, eps, t = torch.randn(5, 3, 8, 8, generator=g), torch.randn(5, 3, 8, 8, generator=g), torch.tensor([0, 1, 250, 700, 999])
    x_t = DdpmNoising(objective).add_noise(x0, t, eps)
    out = torch.randn(5, 3, 8, 8, generator=g)
    pred, v = objective.compare(out, x0, x_t, eps, t)  # the training's target: v, compared in v-space
    assert torch.equal(pred, out)
    torch.testing.assert_close(v, scheduler.get_velocity(x0, eps, t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_t, scheduler.add_noise(x0, eps, t), rtol=1e-5, atol=1e-6)
    # sqrt(ᾱ_t) and sqrt(1-ᾱ_t) are rounded once from float64 (exact at t = 0, where 1-ᾱ_t is 1e-3)
    abar = objective.alphas_cumprod[t]
    assert [c.flatten().tolist() for c in objective.coefficients(t, x0)] == [abar.sqrt().float().tolist(),
                                                                            (1 - abar).sqrt().float().tolist()]

    stats = sd.train_sd(tmp_path / "v", steps=2, batch=8, lr=1e-3, beta_schedule="scaled_linear", seed=0,
                           prediction_type="v_prediction")
    eps_run = sd.train_sd(tmp_path / "eps", steps=2, batch=8, lr=1e-3, beta_schedule="scaled_linear", seed=0)
    assert stats["prediction_type"] == "v_prediction" and stats["loss"] != eps_run["loss"]  # another target
    config = json.loads((tmp_path / "v" / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    from diffusion_classifier.families.sd import load_text_conditional

    model = load_text_conditional(str(tmp_path / "v"))  # the public loader reads it, with its objective
    objective = getattr(model, "objective", None)
    if objective is not None:
        assert objective.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type"):
        sd.train_sd(tmp_path / "x", steps=1, batch=2, lr=1e-3, beta_schedule="scaled_linear", seed=0,
                       prediction_type="sample_typo")


def test_sd_flow_variant_trains_a_rectified_flow_unet_that_loads_and_scores_as_flow(tmp_path):
    """sd-flow: the UNet recipe with the rectified-flow objective (x_t = (1-σ)x0 + σε, target ε - x0, timestep σ·1000);
    its folder holds a FlowMatchEulerDiscreteScheduler and the SD family scores it with the flow objective."""
    from diffusion_classifier.objectives import FlowObjective
    from diffusion_classifier.training.flow import FlowNoising

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    sigma = FlowNoising(1.0).draw_times(4, g)
    assert ((0 < sigma) & (sigma < 1)).all()
    torch.testing.assert_close(FlowNoising(1.0).add_noise(x0, sigma, eps),
                               (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps)

    stats = sd.train_sd(tmp_path / "flow", steps=2, batch=8, lr=1e-3, beta_schedule="scaled_linear", seed=0,
                        prediction_type="flow")
    eps_run = sd.train_sd(tmp_path / "eps", steps=2, batch=8, lr=1e-3, beta_schedule="scaled_linear", seed=0)
    assert stats["prediction_type"] == "flow" and stats["loss"] != eps_run["loss"]  # another target
    index = json.loads((tmp_path / "flow" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    from diffusion_classifier.families.sd import load_text_conditional

    model = load_text_conditional(str(tmp_path / "flow"))
    objective = model.make_objective((3, 8, 8))
    assert isinstance(objective, FlowObjective) and model.T == 1000
    # the objective forms x_t and gives the UNet σ·1000, as the training did
    t = torch.tensor([0, 500, 999, 250])
    x_t, given = objective.noise(x0, t, eps)
    s = objective.sigmas[t].float()
    torch.testing.assert_close(x_t, (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * eps)
    torch.testing.assert_close(given, s * 1000)
    sd.write_sd_card(tmp_path / "flow", {**stats, "threads": 1})
    card = (tmp_path / "flow" / "README.md").read_text()
    assert "rectified flow" in card and "--model sd-flow" in card and "velocity MSE" in card


def test_flow_training_conditions_as_the_sd3_pipeline_and_writes_a_loadable_folder(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    stats = flow.train_flow(tmp_path, steps=2, batch=8, lr=1e-3, shift=3.0, seed=0, patch=4, heads=2, head_dim=8,
                             layers=2)
    assert stats["steps"] == 2 and stats["shift"] == 3.0
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["vae"] == [None, None] and index["text_encoder_3"] == [None, None] and index["tokenizer_3"] == [None, None]
    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path, vae=None, text_encoder_3=None, tokenizer_3=None,
                                                    image_encoder=None, feature_extractor=None)
    assert pipe.transformer.config.patch_size == 4 and pipe.transformer.config.num_layers == 2
    assert pipe.transformer.config.in_channels == 3 and pipe.transformer.config.sample_size == 8
    assert pipe.scheduler.config.shift == 3.0 and type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"

    # the training's conditioning is what the pipeline's encode_prompt computes without T5
    prompts = ["seven", "", "a photo of the number: '3'."]
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device="cpu", do_classifier_free_guidance=False)
    with torch.no_grad():
        e, p = flow.sd3_prompt_embeds([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2],
                                      prompts, flow.JOINT_ATTENTION_DIM)
    assert e.shape == (3, flow.MAX_LENGTH + flow.T5_ZEROS_LENGTH, flow.JOINT_ATTENTION_DIM) and p.shape == (3, 64)
    assert torch.equal(e, embeds) and torch.equal(p, pooled)
    assert not torch.equal(e[0], e[1])  # the captions matter

    # the toolkit's SD3 family reads the folder: flow objective with the scheduler's shift, the same conditioning,
    # and (T5 absent) the compact context gives what the transformer gives on the pipeline's full context
    from diffusion_classifier.families import load_model
    from diffusion_classifier.objectives import FlowObjective

    model = load_model(str(tmp_path))
    assert model.family == "sd3" and model.native_size == 8 and model.latent_shape(8) == (3, 8, 8)
    objective = model.objective
    assert isinstance(objective, FlowObjective) and objective.error_space == "eps"
    torch.testing.assert_close(objective.sigmas[499], torch.tensor(3 * 0.5 / (1 + 2 * 0.5), dtype=torch.float64))
    conds = model.encode_prompts(prompts)
    assert torch.equal(conds.prompt_embeds, embeds) and torch.equal(conds.pooled, pooled)
    assert model.compact_t5_zeros
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([100.0, 500.0, 900.0])
    with torch.no_grad():
        full = pipe.transformer(x, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=t).sample
        torch.testing.assert_close(model.denoiser(x, t, conds), full, rtol=1e-4, atol=1e-6)


def test_one_repeated_zero_row_with_log_count_bias_equals_the_full_t5_zeros_context():
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from diffusion_classifier.training import flow

    torch.manual_seed(0)
    transformer = flow.build_transformer(patch=2, heads=2, head_dim=8, layers=3)
    for p in transformer.parameters():  # the zero-initialised output layers would hide differences
        torch.nn.init.normal_(p, std=0.1)
    clip = torch.randn(2, 7, flow.JOINT_ATTENTION_DIM)
    zeros = torch.zeros(2, flow.T5_ZEROS_LENGTH, flow.JOINT_ATTENTION_DIM)
    x, t, pooled = torch.randn(2, 3, 8, 8), torch.tensor([150.0, 800.0]), torch.randn(2, 64)
    with torch.no_grad():
        full = transformer(x, encoder_hidden_states=torch.cat([clip, zeros], 1), pooled_projections=pooled, timestep=t).sample
        short = torch.cat([clip, zeros[:, :1]], 1)
        naive = transformer(x, encoder_hidden_states=short, pooled_projections=pooled, timestep=t).sample
        transformer.set_attn_processor(flow.RepeatedLastKeyAttention(flow.T5_ZEROS_LENGTH))
        fast = transformer(x, encoder_hidden_states=short, pooled_projections=pooled, timestep=t).sample
        transformer.set_attn_processor(JointAttnProcessor2_0())
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-5)
    assert (naive - full).abs().max() > 1e-3  # one zero row alone is another function


def test_flow_noising_draws_logit_normal_sigmas_through_the_shift():
    from diffusion_classifier.training.flow import FlowNoising

    g = torch.Generator().manual_seed(0)
    s1 = FlowNoising(1.0).draw_times(20000, g)
    assert 0 < s1.min() and s1.max() < 1 and abs(s1.median().item() - 0.5) < 0.02
    s3 = FlowNoising(3.0).draw_times(20000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(s3, 3 * s1 / (1 + 2 * s1))  # same draws, shifted as the scheduler shifts
    x0, eps, sigma = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = FlowNoising(1.0).add_noise(x0, sigma, eps)
    torch.testing.assert_close(xt[0], x0[0]) and torch.testing.assert_close(xt[3], eps[3])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * eps[1])


@pytest.mark.slow  # launches a script as a separate process
def test_holdout_keeps_its_images_out_of_training_and_names_them_in_the_model_folder(tmp_path):
    from diffusion_classifier.data.digits import load_digits_arrays
    from diffusion_classifier.training.common import holdout_split, train_images
    from diffusion_classifier.training.data import DIGITS

    x, y = train_images(DIGITS)
    (x_fit, y_fit), held = holdout_split(x, y, 3, seed=1)
    assert len(held) == 30 and len(y_fit) == len(y) - 30
    assert torch.bincount(y[held]).tolist() == [3] * 10  # stratified
    assert holdout_split(x, y, 3, seed=1)[1] == held and holdout_split(x, y, 3, seed=2)[1] != held
    kept = set(range(len(y))) - set(held)
    assert torch.equal(x_fit, x[sorted(kept)])  # the rest, in order
    with pytest.raises(InputError, match="--holdout"):
        holdout_split(x, y, 10_000)

    args = [sys.executable, str(REPO / "scripts" / "train_tiny_models.py"), "--model", "sd", "--steps", "2",
            "--batch", "4", "--channels", "8", "16", "--holdout", "3", "--out", str(tmp_path / "out"),
            "--checkpoint-dir", str(tmp_path / "ck")]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "out" / "digits-sd"
    record = json.loads((folder / "heldout_train.json").read_text())
    assert record["indices"] == held and record["split"] == "train" and record["per_class"] == 3
    stats = json.loads((folder / "training.json").read_text())
    assert stats["n_train"] == len(load_digits_arrays("train")[1]) - 30 and stats["holdout_per_class"] == 3
    assert "--holdout 3" in (folder / "README.md").read_text()
    clash = subprocess.run(args + ["--val-fraction", "0.1"], capture_output=True, text=True)
    assert clash.returncode == 2 and "--holdout" in clash.stderr


def test_warm_start_goes_on_from_a_saved_folder_and_its_card_keeps_every_stage(tmp_path):
    train, kw = TINY["sd"]
    first = train(tmp_path / "first", **kw)
    first["threads"] = 1
    (tmp_path / "first" / "training.json").write_text(json.dumps(first))
    # at a vanishing lr the weights stay those loaded: the modules start from the folder, not from the seed
    still = train(tmp_path / "still", **{**kw, "lr": 1e-12, "seed": 5}, init=tmp_path / "first")
    wf, ws = weights(tmp_path / "first"), weights(tmp_path / "still")
    assert all(torch.allclose(wf[k], ws[k], atol=1e-6) for k in wf)
    train(tmp_path / "fresh", **{**kw, "lr": 1e-12, "seed": 5})
    fresh = weights(tmp_path / "fresh")
    assert any(not torch.allclose(wf[k], fresh[k], atol=1e-3) for k in wf)
    assert still["init"]["steps"] == kw["steps"] and still["init"]["wall"] == first["wall"]

    on = train(tmp_path / "on", **{**kw, "steps": 3}, init=tmp_path / "first")
    on["threads"] = 1
    sd.write_sd_card(tmp_path / "on", on)
    card = (tmp_path / "on" / "README.md").read_text()
    assert "went on from the weights" in card and f"{kw['steps'] + 3} steps" in card
    commands = [line for line in card.splitlines() if line.startswith("python3 scripts/train_tiny_models.py")]
    assert len(commands) == 2 and "--init" not in commands[0] and "--steps 3 " in commands[1]
    assert commands[1].endswith("--init diffusion_classifier/tiny_models/digits-sd")

    with pytest.raises(InputError, match="architecture"):
        train(tmp_path / "wide", **{**kw, "channels": (16, 32)}, init=tmp_path / "first")
    with pytest.raises(InputError, match="held out 0 train images and this run 3"):
        train(tmp_path / "held", **kw, init=tmp_path / "first", held=[1, 2, 3])
    with pytest.raises(InputError, match="training.json"):
        train(tmp_path / "none", **kw, init=tmp_path / "missing")
    with pytest.raises(InputError, match="v_prediction"):
        train(tmp_path / "v", **kw, prediction_type="v_prediction", init=tmp_path / "first")


@pytest.mark.slow
def test_script_refuses_a_warm_start_of_a_kind_that_has_none(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train_tiny_models.py"), "--model", "dit",
                           "--init", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "--init is implemented for --model sd" in done.stderr
