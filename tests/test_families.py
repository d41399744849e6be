"""Every model family end to end on a tiny seeded pipeline folder, against a plain computation with diffusers.

The plain computation uses the diffusers pipelines' own prompt encoding, time ids, packing and
schedulers (add_noise, get_velocity, scale_noise, set_timesteps with mu), one denoiser call per job.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import eval_prob_adaptive
from diffusion_classifier.classifier import DiffusionClassifier
from diffusion_classifier.errors import InputError, MissingError
from diffusion_classifier.families import detect_family, load_model
from diffusion_classifier.records import load_record
from family_builders import build_flux, build_sd3, build_sd_v, build_sdxl, build_sdxl_refiner

PROMPTS = ["zero", "one", "a two"]
CLASSIDX = [5, 7, 0]  # the labels of IMAGES (5, 7) each have a prompt, as the run requires
CSV = "prompt,classname,classidx\n" + "".join(f"{p},{p},{c}\n" for p, c in zip(PROMPTS, CLASSIDX))
IMAGES = [0, 5]
TS = [125, 375, 625, 875]  # the reference grid for --n_samples 4

# name -> (builder, extra flags, plain-computation options)
CASES = {
    "sd_v": (lambda f: build_sd_v(f), [], {}),
    "sd_v_native": (lambda f: build_sd_v(f), ["--error_space", "native"], {"native": True}),
    "sd_x0": (lambda f: build_sd_v(f, "sample"), [], {}),
    "sdxl": (build_sdxl, [], {}),
    "sdxl_refiner": (build_sdxl_refiner, [], {}),  # 5 time ids with the aesthetic score, no first text encoder
    "sdxl_edm_v": (lambda f: build_sdxl(f, edm_v=True), [], {}),  # the UNet is given ¼·log σ (CosXL's scheduler)
    "sd3": (build_sd3, [], {}),
    "sd3_no_t5": (build_sd3, ["--no_t5"], {"no_t5": True}),
    "sd3_velocity": (build_sd3, ["--error_space", "native"], {"native": True}),
    "sd3_pixels_null_parts": (lambda f: build_sd3(f, with_t5=False, with_vae=False), [], {}),
    "sd3_dynamic_shift": (lambda f: build_sd3(f, dynamic_shifting=True), [], {}),
    "flux_dev": (build_flux, ["--guidance", "2.5"], {"guidance": 2.5}),
    "flux_schnell": (lambda f: build_flux(f, guidance_embeds=False), [], {}),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    made = {}

    def get(name):
        builder = CASES[name][0]
        key = {"sd_v_native": "sd_v", "sd3_no_t5": "sd3", "sd3_velocity": "sd3"}.get(name, name)
        if key not in made:
            made[key] = builder(root / key)
        return made[key]

    return get


def digit_pixels(idx: int, size: int = 8) -> torch.Tensor:
    from torchvision import transforms

    from diffusion_classifier.data.digits import DigitsDataset

    tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    return tf(DigitsDataset("test")[idx][0])


def mse(a, b) -> float:
    return float(F.mse_loss(a.float(), b.float()))


@torch.no_grad()
def plain_errors(name: str, folder: Path, pixels: torch.Tensor, noise: torch.Tensor, opts: dict,
                 PROMPTS=PROMPTS, TS=TS, rows=None) -> list[list[float]]:  # noqa: N803 - the module's defaults
    """errors[prompt][k] for timestep TS[k] with noise[rows[k]] (default k), each from one direct denoiser call."""
    family = detect_family(json.loads((folder / "model_index.json").read_text()))
    x = pixels[None]
    errs = [[None] * len(TS) for _ in PROMPTS]
    noise = noise[torch.as_tensor(rows if rows is not None else range(len(TS)))]
    if family == "sd":
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
        vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        ids = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        embeds = CLIPTextModel.from_pretrained(folder / "text_encoder")(ids)[0]
        sched = DDPMScheduler.from_pretrained(folder / "scheduler")
        latent = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        for p in range(len(PROMPTS)):
            for k, t in enumerate(TS):
                tt = torch.tensor([t])
                eps = noise[k : k + 1]
                x_t = sched.add_noise(latent, eps, tt)
                out = unet(x_t, tt, encoder_hidden_states=embeds[p : p + 1]).sample
                ab = float(sched.alphas_cumprod[t])
                if sched.config.prediction_type == "epsilon":
                    errs[p][k] = mse(out, eps)
                elif sched.config.prediction_type == "v_prediction":
                    v = sched.get_velocity(latent, eps, tt)
                    # ε̂ - ε = sqrt(ᾱ)(v̂ - v): the ε-space error is ᾱ times the v-space one
                    errs[p][k] = mse(out, v) * (1 if opts.get("native") else ab)
                else:  # x0 prediction: ε̂ - ε = -sqrt(ᾱ/(1-ᾱ))(x̂0 - x0)
                    errs[p][k] = mse(out, latent) * ab / (1 - ab)
        return errs
    if family == "sdxl":
        from diffusers import DDPMScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        index = json.loads((folder / "model_index.json").read_text())
        size = (x.shape[-2], x.shape[-1])
        if index.get("requires_aesthetics_score"):  # the refiner: original size, crop, aesthetic score (default 6)
            pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder)
            pe, _, pooled, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
            time_ids, _ = pipe._get_add_time_ids(size, (0, 0), size, 6.0, 2.5, size, (0, 0), size, pe.dtype,
                                                 text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        else:
            pipe = StableDiffusionXLPipeline.from_pretrained(folder)
            pe, _, pooled, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
            time_ids = pipe._get_add_time_ids(size, (0, 0), size, pe.dtype,
                                              text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        if pipe.config.force_zeros_for_empty_prompt:  # "" is the pipeline's unconditional branch: zeros
            empty = torch.tensor([q == "" for q in PROMPTS])
            pe, pooled = pe.masked_fill(empty[:, None, None], 0), pooled.masked_fill(empty[:, None], 0)
        sched = DDPMScheduler.from_config(pipe.scheduler.config)
        # the UNet's timestep as the pipeline's own scheduler maps training step t (¼·log σ where 'continuous')
        unet_t = pipe.scheduler.timesteps.flip(0)
        latent = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        for p in range(len(PROMPTS)):
            for k, t in enumerate(TS):
                eps = noise[k : k + 1]
                x_t = sched.add_noise(latent, eps, torch.tensor([t]))
                out = pipe.unet(x_t, unet_t[t : t + 1], encoder_hidden_states=pe[p : p + 1],
                                added_cond_kwargs={"text_embeds": pooled[p : p + 1], "time_ids": time_ids}).sample
                if sched.config.prediction_type == "v_prediction":  # ε-space error: ᾱ times the v-space one
                    v = sched.get_velocity(latent, eps, torch.tensor([t]))
                    errs[p][k] = mse(out, v) * float(sched.alphas_cumprod[t])
                else:
                    errs[p][k] = mse(out, eps)
        return errs
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    T = sched.config.num_train_timesteps
    if family == "sd3":
        from diffusers import StableDiffusion3Pipeline

        index = json.loads((folder / "model_index.json").read_text())
        kw = {k: None for k, v in index.items() if v == [None, None]}  # parts the folder lists as null
        if opts.get("no_t5"):
            kw.update(text_encoder_3=None, tokenizer_3=None)
        pipe = StableDiffusion3Pipeline.from_pretrained(folder, **kw)
        pe, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False)
        if pipe.vae is None:
            latent = x
        else:
            latent = (pipe.vae.encode(x).latent_dist.mean - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        if sched.config.use_dynamic_shifting:  # the shift at the image's token count, as the pipeline sets it
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            patch = pipe.transformer.config.patch_size
            c_ = sched.config
            mu = calculate_shift((latent.shape[-2] // patch) * (latent.shape[-1] // patch), c_.base_image_seq_len,
                                 c_.max_image_seq_len, c_.base_shift, c_.max_shift)
            sched.set_timesteps(T, mu=mu)
        for p in range(len(PROMPTS)):
            for k, t in enumerate(TS):
                eps = noise[k : k + 1]
                timestep = sched.timesteps[T - 1 - t : T - t]  # training timesteps run from T down to 1
                x_t = sched.scale_noise(latent, timestep, eps)
                out = pipe.transformer(hidden_states=x_t, timestep=timestep, encoder_hidden_states=pe[p : p + 1],
                                       pooled_projections=pooled[p : p + 1]).sample
                errs[p][k] = flow_error(out, x_t, eps, latent, sched.sigmas[T - 1 - t], opts)
        return errs
    from diffusers import FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipe = FluxPipeline.from_pretrained(folder)
    pe, pooled, text_ids = pipe.encode_prompt(PROMPTS, None)
    latent = (pipe.vae.encode(x).latent_dist.mean - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    _, c, h, w = latent.shape
    c_ = sched.config
    mu = calculate_shift((h // 2) * (w // 2), c_.base_image_seq_len, c_.max_image_seq_len, c_.base_shift, c_.max_shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / T, T), mu=mu)
    img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", latent.dtype)
    guidance = torch.tensor([opts.get("guidance", 3.5)]) if pipe.transformer.config.guidance_embeds else None
    for p in range(len(PROMPTS)):
        for k, t in enumerate(TS):
            eps = noise[k : k + 1]
            timestep = sched.timesteps[T - 1 - t : T - t]
            x_t = sched.scale_noise(latent, timestep, eps)
            out = pipe.transformer(hidden_states=FluxPipeline._pack_latents(x_t, 1, c, h, w), timestep=timestep / 1000,
                                   guidance=guidance, pooled_projections=pooled[p : p + 1],
                                   encoder_hidden_states=pe[p : p + 1], txt_ids=text_ids, img_ids=img_ids).sample
            out = FluxPipeline._unpack_latents(out, x.shape[-2], x.shape[-1], pipe.vae_scale_factor)
            errs[p][k] = flow_error(out, x_t, eps, latent, sched.sigmas[T - 1 - t], opts)
    return errs


def flow_error(out, x_t, eps, latent, sigma, opts) -> float:
    """A flow model's error as the scripts compare it by default: the ε recovered from the velocity,
    x_t + (1-σ)v̂, against ε; with --error_space native the velocity against ε - x0."""
    if opts.get("native"):
        return mse(out, eps - latent)
    return mse(x_t + (1 - float(sigma)) * out, eps)


@pytest.mark.parametrize("name", list(CASES))
def test_family_end_to_end_equals_plain_computation(name, folders, tmp_path):
    folder = folders(name)
    _, flags, opts = CASES[name]
    model = load_model(str(folder), no_t5=opts.get("no_t5", False))
    shape = model.latent_shape(8)
    noise = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    torch.save(noise, tmp_path / "noise.pt")
    (tmp_path / "prompts.csv").write_text(CSV)
    np.save(tmp_path / "subset.npy", np.array(IMAGES))
    out = eval_prob_adaptive.main(["--model", str(folder), "--dataset", "digits", "--split", "test",
                                   "--prompt_path", str(tmp_path / "prompts.csv"), "--subset_path", str(tmp_path / "subset.npy"),
                                   "--log_dir", str(tmp_path / "logs"), "--img_size", "8", "--to_keep", "1",
                                   "--n_samples", "4", "--noise_path", str(tmp_path / "noise.pt"), "--batch_size", "5",
                                   "--no_progress", *flags])
    folder_out = Path(out["folder"])
    api = DiffusionClassifier.from_pretrained(str(folder), no_t5=opts.get("no_t5", False), guidance=opts.get("guidance"),
                                              error_space="native" if opts.get("native") else None)
    pixels = torch.stack([digit_pixels(i) for i in IMAGES])
    preds = api.classify(pixels, PROMPTS, to_keep=(1,), n_samples=(4,), noise=noise)
    for i, idx in enumerate(IMAGES):
        rec = load_record(folder_out / f"{idx:03d}.pt")
        plain = plain_errors(name, folder, pixels[i], noise, opts)
        for p in range(len(PROMPTS)):
            assert rec["errors"][p]["t"].tolist() == TS
            torch.testing.assert_close(rec["errors"][p]["pred_errors"].double(), torch.tensor(plain[p], dtype=torch.float64),
                                       rtol=2e-4, atol=1e-6)
            torch.testing.assert_close(preds[i].errors[p]["pred_errors"], rec["errors"][p]["pred_errors"], rtol=1e-5, atol=1e-7)
        winner = int(np.argmin([np.mean(e) for e in plain]))
        assert winner == preds[i].pred and rec["pred"] == CLASSIDX[winner]


def test_v_prediction_is_not_compared_as_epsilon(folders):
    """The old silent bug: a v-model's output taken as ε̂. Its ε-space error is ᾱ times the v-space one, not ‖v̂-ε‖²."""
    m = load_model(str(folders("sd_v")))
    assert m.make_objective().prediction_type == "v_prediction"
    native, eps_space = m.make_objective(error_space="native"), m.make_objective()
    x0, eps, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([100, 900])
    x_t, _ = eps_space.noise(x0, t, eps)
    out = torch.randn_like(x0)
    p_n, t_n = native.compare(out, x0, x_t, eps, t)
    p_e, t_e = eps_space.compare(out, x0, x_t, eps, t)
    assert torch.equal(t_e, eps)
    ab = m.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(p_e - t_e, ab.sqrt() * (p_n - t_n), rtol=1e-5, atol=1e-6)


def test_prompt_truncation_warns_once(folders):
    m = load_model(str(folders("sd3")))
    long = "one " * 20  # past both 16-token CLIP tokenizers (80 characters) and within T5's 256
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) exceed the token limit \(CLIP tokenizer 16\)") as rec:
        c = m.encode_prompts([long, "one"])
    assert len([w for w in rec if "truncated" in str(w.message)]) == 1
    assert c.prompt_embeds.shape == (2, 16 + 256, 32)


def test_missing_part_and_unknown_family_are_one_line_errors(folders, tmp_path):
    sd3 = tmp_path / "sd3_broken"
    shutil.copytree(folders("sd3"), sd3)
    index = json.loads((sd3 / "model_index.json").read_text())
    index["transformer"] = [None, None]
    (sd3 / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(MissingError, match="has no transformer in its model_index.json") as e:
        load_model(str(sd3))
    assert "\n" not in str(e.value)

    flux = tmp_path / "flux_broken"
    shutil.copytree(folders("flux_dev"), flux)
    shutil.rmtree(flux / "text_encoder_2")
    with pytest.raises(MissingError, match="flux_broken") as e:
        load_model(str(flux))
    assert "\n" not in str(e.value)

    index["_class_name"] = "KandinskyV22Pipeline"
    (sd3 / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="unknown model family.*KandinskyV22Pipeline") as e:
        load_model(str(sd3))
    assert "\n" not in str(e.value)


def test_unknown_objective_in_a_folder_is_one_line_error(folders, tmp_path):
    sd = tmp_path / "sd_weird"
    shutil.copytree(folders("sd_v"), sd)
    cfg = json.loads((sd / "scheduler" / "scheduler_config.json").read_text())
    cfg["prediction_type"] = "score"
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="unknown prediction type 'score'") as e:
        load_model(str(sd))
    assert "\n" not in str(e.value)


def test_unets_that_need_other_conditioning_are_one_line_errors(folders, tmp_path):
    """UNets the pipeline of their folder cannot drive: refused at loading, not by a traceback from the first batch."""
    from diffusers import UNet2DConditionModel

    def with_unet(name, src, index=None, **changes):
        folder = tmp_path / name
        shutil.copytree(folders(src), folder)
        config = dict(UNet2DConditionModel.load_config(folder / "unet"))
        UNet2DConditionModel.from_config({**config, **changes}).save_pretrained(folder / "unet")
        if index:
            (folder / "model_index.json").write_text(json.dumps({**json.loads((folder / "model_index.json").read_text()),
                                                                 **index}))
        return str(folder)

    cases = [  # (folder, the error's expected words)
        (with_unet("sd_unclip_unet", "sd_v", class_embed_type="projection", projection_class_embeddings_input_dim=8),
         "takes extra conditioning \\(class_embed_type 'projection'\\) .*expected a UNet conditioned on the prompt alone"),
        (with_unet("sd_upscaler_unet", "sd_v", num_class_embeds=10), "takes extra conditioning \\(num_class_embeds 10\\)"),
        (with_unet("sd_with_sdxl_unet", "sd_v", addition_embed_type="text_time", addition_time_embed_dim=8,
                   projection_class_embeddings_input_dim=6 * 8 + 16), "an SDXL UNet, .*StableDiffusionXLPipeline"),
        (with_unet("sd_inpainting", "sd_v", {"_class_name": "StableDiffusionInpaintPipeline"}, in_channels=9),
         "takes 9-channel inputs \\(4 latent channels, a mask and 4 masked-image channels\\): an inpainting model"),
        # a refiner UNet (5 time ids) whose model_index.json leaves requires_aesthetics_score out, and a base UNet
        # (6 time ids) in a folder that sets it
        (with_unet("refiner_without_flag", "sdxl_refiner", {"requires_aesthetics_score": False}),
         "takes 48 features, but 6 time ids .*set \"requires_aesthetics_score\": true"),
        (with_unet("base_with_flag", "sdxl", {"requires_aesthetics_score": True}),
         "takes 56 features, but 5 time ids .*set \"requires_aesthetics_score\": false"),
    ]
    for folder, words in cases:
        with pytest.raises(InputError, match=words) as e:
            load_model(folder)
        assert "\n" not in str(e.value)


def test_dit_with_a_flow_matching_scheduler_is_refused(tmp_path):
    """A DiT's ᾱ table would come from β defaults of a scheduler config that has none: refused, not scored."""
    from conftest import build_tiny_dit
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffusion_classifier.families.dit import load_class_conditional

    dit = build_tiny_dit(tmp_path / "dit")
    shutil.rmtree(dit / "scheduler")
    FlowMatchEulerDiscreteScheduler(shift=1.0).save_pretrained(dit / "scheduler")
    with pytest.raises(InputError, match="FlowMatchEulerDiscreteScheduler \\(flow matching\\); expected a DDPM-family") as e:
        load_class_conditional(str(dit))
    assert "\n" not in str(e.value)


def test_sdxl_vae_kept_in_float32_when_force_upcast(folders):
    m = load_model(str(folders("sdxl")), dtype=torch.float16)
    assert m.autoencoder.vae.dtype == torch.float32 and m.unet.dtype == torch.float16
    assert m.encode_images(torch.zeros(1, 3, 8, 8)).dtype == torch.float32


def test_version_ids_and_offline_hub_id_message():
    from diffusion_classifier.families import resolve_model

    assert resolve_model("2-1-768") == "stabilityai/stable-diffusion-2-1"
    assert resolve_model("2-0-768") == "stabilityai/stable-diffusion-2"
    assert resolve_model("flux-dev") == "black-forest-labs/FLUX.1-dev"
    assert resolve_model("3-5-large") == "stabilityai/stable-diffusion-3.5-large"
    assert resolve_model("2-0", model="xl-1-0") == "stabilityai/stable-diffusion-xl-base-1.0"
    with pytest.raises(InputError, match="unknown model version 'xl-2'"):
        resolve_model("xl-2")
    with pytest.raises(MissingError, match="huggingface-cli download stabilityai/stable-diffusion-3.5-medium") as e:
        load_model(resolve_model("3-5-medium"))  # HF_HUB_OFFLINE: not in the cache
    assert "\n" not in str(e.value)
    # how to provide it, without naming a flag of one script (run_compositional.py takes --model_path)
    assert "hf download stabilityai/stable-diffusion-3.5-medium" in str(e.value) and "HF_HOME" in str(e.value)
    assert "--model" not in str(e.value)


def test_missing_damaged_or_single_file_parts_are_one_line_errors(folders, tmp_path):
    sd = tmp_path / "sd_no_tokenizer"
    shutil.copytree(folders("sd_v"), sd)
    shutil.rmtree(sd / "tokenizer")  # transformers would build an empty tokenizer from nothing
    with pytest.raises(MissingError, match="sd_no_tokenizer' lacks its tokenizer: .* is missing or empty") as e:
        load_model(str(sd))
    assert "\n" not in str(e.value)

    damaged = tmp_path / "sd_damaged"
    shutil.copytree(folders("sd_v"), damaged)
    (damaged / "text_encoder" / "model.safetensors").write_bytes(b"\xff" * 5000)
    with pytest.raises(InputError, match="sd_damaged': its text_encoder cannot be loaded .*damaged") as e:
        load_model(str(damaged))
    assert "\n" not in str(e.value)

    single = folders("sd_v") / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(InputError, match="is a file .*expected a diffusers pipeline folder"):
        DiffusionClassifier.from_pretrained(str(single))


def test_options_the_family_does_not_use_are_refused(folders):
    with pytest.raises(InputError, match="no_t5 drops the T5 encoder of SD3/SD3.5 models; .* family 'flux'"):
        load_model(str(folders("flux_dev")), no_t5=True)
    with pytest.raises(InputError, match="guidance sets the guidance embedding of Flux-dev models; .* family 'sd'"):
        load_model(str(folders("sd_v")), guidance=2.0)
    with pytest.raises(InputError, match="has none \\(as FLUX.1-schnell\\)"):
        load_model(str(folders("flux_schnell")), guidance=2.0)


def test_image_sizes_the_model_does_not_take(folders):
    sd3 = load_model(str(folders("sd3")))  # pos_embed_max_size 8 patches of 2 latent pixels, VAE factor 2: 32 px
    assert sd3.latent_shape((32, 16)) == (4, 16, 8)
    with pytest.raises(InputError, match="at most 32 px a side .* got 40"):
        sd3.latent_shape(40)
    api = DiffusionClassifier.from_pretrained(str(folders("sd_v")))  # VAE factor 2: the Python API checks as the scripts
    with pytest.raises(InputError, match="divisible by 2 for this model, got 7"):
        api.classify([Image.new("RGB", (8, 8))], PROMPTS, n_samples=[2], img_size=7)


def test_sdxl_empty_prompt_is_the_pipelines_unconditional(folders, tmp_path):
    """SDXL base folders set force_zeros_for_empty_prompt (unset: the pipeline's default, true): the pipeline's
    unconditional branch is the all-zero condition, so the toolkit's "" (Winoground's and the null-normalised
    scores' unconditional) is too; other prompts, and "" where the folder sets it false, are encoded as before."""
    from diffusers import StableDiffusionXLPipeline

    folder = folders("sdxl")
    model = load_model(str(folder))
    cond = model.encode_prompts(["a two", ""])
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder))
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt("a two", do_classifier_free_guidance=True)
    torch.testing.assert_close(cond.prompt_embeds[:1], embeds)
    torch.testing.assert_close(cond.pooled[:1], pooled)
    torch.testing.assert_close(cond.prompt_embeds[1:], negative)  # zeros, as the pipeline samples with
    torch.testing.assert_close(cond.pooled[1:], negative_pooled)
    assert not negative.any()
    off = tmp_path / "sdxl_off"
    shutil.copytree(folder, off)
    index = json.loads((off / "model_index.json").read_text())
    (off / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": False}))
    encoded = load_model(str(off)).encode_prompts([""])
    assert encoded.prompt_embeds.abs().sum() > 0
    torch.testing.assert_close(encoded.prompt_embeds, pipe.encode_prompt("", do_classifier_free_guidance=False)[0])


def test_latent_channels_and_class_conditional_loader_check_the_folder(folders, tmp_path):
    from conftest import build_tiny_dit
    from diffusion_classifier.families.dit import load_class_conditional

    sd = tmp_path / "sd_vae_null"
    shutil.copytree(folders("sd_v"), sd)
    index = json.loads((sd / "model_index.json").read_text())
    (sd / "model_index.json").write_text(json.dumps({**index, "vae": [None, None]}))
    with pytest.raises(InputError, match="its UNet takes 4-channel inputs but would get RGB pixels"):
        load_model(str(sd))
    dit = build_tiny_dit(tmp_path / "dit")  # pixel space: 3 channels
    with pytest.raises(InputError, match="takes 3-channel inputs but would get 4-channel latents from the VAE"):
        load_class_conditional(str(dit), vae=str(folders("sd_v") / "vae"))
    with pytest.raises(InputError, match="is a StableDiffusion3Pipeline .*not a class-conditional DiTPipeline"):
        load_class_conditional(str(folders("sd3")))  # its transformer would load as a DiT's, uninitialised


@pytest.mark.parametrize("name", ["sdxl", "sd3_pixels_null_parts"])
def test_winoground_scores_any_family(name, folders, tmp_path):
    import run_winoground
    from diffusion_classifier.data.winoground import load_winoground, write_winoground

    rng = np.random.default_rng(0)
    images = {f"img_{k}": Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for k in range(2)}
    records = [{"id": 0, "caption_0": "red on blue.", "caption_1": "blue on red.", "tag": "Noun", "secondary_tag": "",
                "num_main_preds": 1, "collapsed_tag": "Object", "image_0": "img_0", "image_1": "img_1"}]
    data = write_winoground(tmp_path / "wino", records, images)
    folder = folders(name)
    result = run_winoground.main(["--model_path", str(folder), "--data_dir", str(data), "--log_dir", str(tmp_path / "logs"),
                                  "--t_interval", "250", "--batch_size", "3", "--seed", "7", "--no_progress"])
    rec = load_record(Path(result["folder"]) / "0.pt")
    shape = load_model(str(folder)).latent_shape(8)
    noise = torch.randn(3, *shape, generator=torch.Generator().manual_seed(7))  # batch_size rows, reused
    ex = load_winoground(data)[0]
    captions = [ex.caption_0, ex.caption_1, ""]
    for i in range(2):
        pixels = torch.from_numpy(np.asarray(ex.open_image(i), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        plain = plain_errors(name, folder, pixels, noise, {}, captions, TS, [0, 1, 2, 0])
        torch.testing.assert_close(rec["errors"][:, i, :, 0].double(), torch.tensor(plain, dtype=torch.float64),
                                   rtol=2e-4, atol=1e-6)
