"""benchmarks/engine_vs_reference.py: its re-creation of the reference loop agrees with the engine; FLOP counts are right."""
import json
import shlex

import pytest
import torch
import torch.nn.functional as F

from conftest import load_script
from diffusion_classifier.engine import Scorer
from diffusion_classifier.families.sd import load_text_conditional
from diffusion_classifier.noise import make_noise
from diffusion_classifier.schedules.staged import n_evaluations

timing, reference_loop, engine_vs_reference, sd2_configs, results = map(load_script, (
    "benchmarks/lib/timing.py", "benchmarks/lib/reference_loop.py", "benchmarks/engine_vs_reference.py",
    "benchmarks/lib/sd2_configs.py", "benchmarks/lib/results.py"))
PROMPTS = ["a photo of a cat.", "a photo of a dog.", "a photo of a bird.", "a photo of a frog."]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches run fastest on one thread, most of all on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pixel_model(tiny_sd_pixels):
    return load_text_conditional(str(tiny_sd_pixels))


@pytest.mark.parametrize("loss", ["l2", "l1"])
def test_reference_loop_matches_engine(pixel_model, loss):
    to_keep, n_samples = [3, 1], [2, 5]
    latents = make_noise(3, (3, 8, 8), seed=1)
    conds = pixel_model.encode_prompts(PROMPTS)
    noise = make_noise(5, (3, 8, 8), seed=2)
    ab = pixel_model.alphas_cumprod
    ref = reference_loop.reference_classify(pixel_model.unet, latents, conds, ab, noise, to_keep, n_samples, batch_size=4,
                                            loss=loss)
    scorer = Scorer(reference_loop.unet_denoiser(pixel_model.unet), ab, noise, batch_size=7)
    eng = reference_loop.engine_classify(scorer, latents, conds, to_keep, n_samples, image_batch=2, loss=loss)

    assert [p for p, _ in ref] == [r.pred for r in eng]
    n_errors = 0
    for (_, data), res in zip(ref, eng):
        assert sorted(data) == sorted(res.errors)
        for c in data:
            assert torch.equal(data[c]["t"], res.errors[c]["t"])
            torch.testing.assert_close(data[c]["pred_errors"], res.errors[c]["pred_errors"], atol=1e-5, rtol=1e-5)
            n_errors += len(data[c]["t"])
    assert n_errors == len(latents) * n_evaluations(len(PROMPTS), to_keep, n_samples)
    agree = reference_loop.compare_results(ref, eng)
    assert agree["same_predictions"] == 3 and agree["errors_compared"] == n_errors and agree["max_abs_diff"] < 1e-5

    # first error of image 1, prompt 2 by hand: grid of 5 -> t = 100, 300, ...; stage 1 takes 300 and 700
    t = 300
    a = ab[t].float()
    x_t = a.sqrt() * latents[1:2] + (1 - a).sqrt() * noise[0:1]
    with torch.no_grad():
        eps_hat = pixel_model.unet(x_t, torch.tensor([t]), encoder_hidden_states=conds[2:3]).sample
    err = (F.mse_loss if loss == "l2" else F.l1_loss)(eps_hat, noise[0:1])
    assert ref[1][1][2]["t"][0] == t
    torch.testing.assert_close(ref[1][1][2]["pred_errors"][0], err, atol=1e-5, rtol=1e-5)


def test_flop_count_matches_hand_count():
    linear = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    assert timing.count_flops(lambda: linear(x)) == 2 * 4 * 16 * 8

    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    img = torch.randn(2, 3, 8, 8)
    assert timing.count_flops(lambda: conv(img)) == 2 * 2 * 5 * 8 * 8 * 3 * 9

    q = torch.randn(2, 3, 16, 8)  # (B, heads, tokens, dim): Q·Kᵀ and A·V, each 2·B·h·L·L·d
    assert timing.count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * (2 * 2 * 3 * 16 * 16 * 8)


def test_peak_by_device_name():
    assert timing.peak_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.0
    assert timing.peak_tflops("NVIDIA H200", torch.float16) == 989.0
    assert timing.peak_tflops("NVIDIA A100-SXM4-80GB", torch.float16) == 312.0
    assert timing.peak_tflops("NVIDIA A100-SXM4-80GB", torch.float32) == 19.5
    assert timing.peak_tflops("NVIDIA H100 PCIe", torch.float16) == 756.0
    assert timing.peak_tflops("NVIDIA GeForce GTX 1080", torch.float16) is None


def test_sd2_configs_give_the_published_sizes():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd2_configs.SD2_BASE_UNET)
        text = CLIPTextModel(CLIPTextConfig(**sd2_configs.SD2_BASE_TEXT_ENCODER))
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724  # SD 2 UNet
    assert sum(p.numel() for p in text.parameters()) == 340_387_840  # OpenCLIP ViT-H/14 text tower, 23 layers


def test_variant_parsing():
    assert engine_vs_reference.parse_variant("compile+channels_last") == {"compile", "channels_last"}
    assert engine_vs_reference.parse_variant("eager") == frozenset()
    with pytest.raises(ValueError, match="got 'compile\\+fast'"):
        engine_vs_reference.parse_variant("compile+fast")
    with pytest.raises(ValueError, match="needs 'compile'"):
        engine_vs_reference.parse_variant("freeze")


def test_main_writes_consistent_results(tiny_sd_pixels, tmp_path):
    out_path = tmp_path / "bench.json"
    argv = ["--model", str(tiny_sd_pixels), "--device", "cpu", "--n_images", "2", "--n_prompts", "3", "--to_keep", "2",
            "1", "--n_samples", "2", "4", "--batch_size", "5", "16", "--warmup", "0", "--repeats", "1", "--json", str(out_path)]
    out = engine_vs_reference.main(argv)
    saved = json.loads(out_path.read_text())
    assert saved["evaluations"] == out["evaluations"] == 2 * n_evaluations(3, [2, 1], [2, 4]) == 20
    assert [r["batch_size"] for r in saved["engine"]] == [5, 16]
    assert saved["agreement"]["same_predictions"] == 2 and saved["agreement"]["within_tolerance"]
    assert saved["speedup"] == pytest.approx(saved["reference"]["seconds"] / saved["best"]["seconds"])
    assert saved["flops_per_eval"] > 0
    assert saved["reference"]["flops_per_s"] == pytest.approx(saved["flops_per_eval"] * 20 / saved["reference"]["seconds"])
    made = saved["provenance"]  # the command that made the file, the versions and the date
    assert made["command"].endswith("python benchmarks/engine_vs_reference.py " + shlex.join(argv))
    assert made["versions"]["torch"] == torch.__version__ and made["date"]


def test_result_writer_records_provenance_and_merges(tmp_path):
    path = tmp_path / "r.json"
    results.write_result(path, [{"a": 1}], "benchmarks/x.py", ["--n", "2"])
    saved = json.loads(path.read_text())
    assert saved["rows"] == [{"a": 1}] and saved["provenance"]["command"].endswith("python benchmarks/x.py --n 2")
    assert set(saved["provenance"]["versions"]) >= {"python", "torch"}
    merged = tmp_path / "merged.json"
    results.write_result(merged, {"a": 1, "b": 2}, "x.py", ["--all"], merge=True)
    results.write_result(merged, {"b": 3}, "x.py", ["--only", "b"], merge=True)  # keeps a, replaces b
    saved = json.loads(merged.read_text())
    assert (saved["a"], saved["b"]) == (1, 3)
    assert [(p["command"].split("x.py ")[1], p["wrote"]) for p in saved["provenance"]] == [("--all", ["a"]),
                                                                                          ("--only b", ["b"])]
