"""The objective layer: DDPM ε / v / x0 conversions and flow-matching noising against diffusers' schedulers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_classifier.schedules.staged import adaptive_classify
from diffusion_classifier.engine import Jobs, Scorer
from diffusion_classifier.errors import InputError
from diffusion_classifier.families.sd import load_text_conditional
from diffusion_classifier.objectives import (FLOW_ERROR_DEFAULT, DDPMObjective, FlowObjective, calculate_shift,
                                             flow_sigmas, objective_from_config)


def _wrap(eps_model, alphas_cumprod, kind):
    """The ε-model's prediction re-expressed as v or x0, from its own x_t and t (independent algebra)."""
    def denoiser(x_t, t, cond):
        eps_hat = eps_model(x_t, t, cond)
        a = alphas_cumprod[t].float().view(-1, 1, 1, 1)
        x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
        return a.sqrt() * eps_hat - (1 - a).sqrt() * x0_hat if kind == "v_prediction" else x0_hat
    return denoiser


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_v_and_x0_wrapped_eps_model_gives_same_errors_and_predictions(tiny_sd, kind):
    m = load_text_conditional(str(tiny_sd))
    ab = m.alphas_cumprod
    latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    conds = m.encode_prompts(["zero", "one", "two", "three"])
    noise = torch.randn(40, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    eps_scorer = Scorer(m.denoiser, DDPMObjective(ab, "epsilon"), noise, batch_size=7)
    other = Scorer(_wrap(m.denoiser, ab, kind), DDPMObjective(ab, kind), noise, batch_size=7)
    jobs = Jobs.build([0, 1, 2, 0], [0, 1, 2, 3], [0, 50, 500, 999], [0, 1, 2, 3])
    ref = eps_scorer.evaluate(latents, conds, jobs)
    torch.testing.assert_close(other.evaluate(latents, conds, jobs), ref, rtol=2e-3, atol=1e-5)
    assert not torch.allclose(Scorer(_wrap(m.denoiser, ab, kind), ab, noise).evaluate(latents, conds, jobs), ref,
                              rtol=1e-2)  # read as ε (the old behaviour) the numbers differ
    run = lambda s: adaptive_classify(lambda j: s.evaluate(latents, conds, j), 3, 4, [2, 1], [5, 10])  # noqa: E731
    for a, b in zip(run(eps_scorer), run(other)):
        assert a.pred == b.pred
        for p in a.errors:
            torch.testing.assert_close(a.errors[p]["pred_errors"], b.errors[p]["pred_errors"], rtol=5e-3, atol=1e-5)


def test_ddpm_noise_matches_hand_computation():
    x0 = torch.tensor([[[[0.5, -1.0]]], [[[2.0, 0.0]]]])  # (2, 1, 1, 2)
    eps = torch.tensor([[[[1.0, 2.0]]], [[[-1.0, 3.0]]]])
    ab = torch.tensor([0.9, 0.64, 0.5, 0.36], dtype=torch.float64)
    t = torch.tensor([1, 3])  # ᾱ 0.64 and 0.36: sqrt 0.8/0.6 and 0.6/0.8
    expected = torch.tensor([[[[0.8 * 0.5 + 0.6 * 1.0, -0.8 + 1.2]]], [[[0.6 * 2.0 - 0.8, 0.8 * 3.0]]]])
    x_t, model_t = DDPMObjective(ab).noise(x0, t, eps)
    assert x_t.dtype == torch.float32 and torch.equal(model_t, t)
    torch.testing.assert_close(x_t, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match=r"expected t of shape \(2,\)"):
        DDPMObjective(ab).noise(x0, t[:1], eps)
    with pytest.raises(InputError, match=r"expected eps of shape \(2, 1, 1, 2\)"):
        FlowObjective(ab).noise(x0, t, eps[:1])


def test_native_error_space_of_v_model_is_the_velocity_error():
    ab = torch.linspace(0.99, 0.01, 1000, dtype=torch.float64)
    obj = DDPMObjective(ab, "v_prediction", "native")
    x0, eps, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([3, 700])
    x_t, model_t = obj.noise(x0, t, eps)
    assert torch.equal(model_t, t)
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(trained_betas=(1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])).numpy(), prediction_type="v_prediction")
    torch.testing.assert_close(x_t, sched.add_noise(x0, eps, t), rtol=1e-5, atol=1e-6)
    _, target = obj.compare(torch.zeros_like(x0), x0, x_t, eps, t)
    torch.testing.assert_close(target, sched.get_velocity(x0, eps, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", [
    {"shift": 1.0},
    {"shift": 3.0},
    {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},
    {"shift": 1.0, "use_dynamic_shifting": True, "time_shift_type": "linear"},
    {"shift": 3.0, "shift_terminal": 0.02},
])
def test_flow_noising_matches_scheduler(config):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **config)
    seq_len = 64 * 64
    obj = objective_from_config({**sched.config, "_class_name": type(sched).__name__}, image_seq_len=seq_len)
    assert isinstance(obj, FlowObjective) and obj.error_space == FLOW_ERROR_DEFAULT == "eps"
    T = 1000
    if config.get("use_dynamic_shifting") or config.get("shift_terminal"):
        mu = calculate_shift(seq_len) if config.get("use_dynamic_shifting") else None
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / T, T), mu=mu)  # σ of every training timestep, shifted
    t = torch.tensor([0, 10, 250, 500, 999])
    x0, eps = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    x_t, model_t = obj.noise(x0, t, eps)
    idx = T - 1 - t  # the scheduler runs from σ_max at index 0 down to σ_min
    torch.testing.assert_close(obj.sigmas[t].float(), sched.sigmas[idx], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model_t, sched.timesteps[idx], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x_t, sched.scale_noise(x0, sched.timesteps[idx], eps), rtol=1e-5, atol=1e-6)
    # the native target is the velocity: an Euler step of the scheduler from σ to 0 with it lands on x0
    native = objective_from_config({**sched.config, "_class_name": type(sched).__name__}, error_space="native",
                                   image_seq_len=seq_len)
    pred, target = native.compare(torch.zeros_like(x0), x0, x_t, eps, t)
    torch.testing.assert_close(target, eps - x0)
    for i in range(len(t)):
        one = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **{**config, "use_dynamic_shifting": False,
                                                                          "shift": 1.0, "shift_terminal": None})
        one.set_timesteps(sigmas=[float(obj.sigmas[t[i]])])
        x_prev = one.step(target[i : i + 1], one.timesteps[0], x_t[i : i + 1]).prev_sample
        torch.testing.assert_close(x_prev, x0[i : i + 1], rtol=1e-4, atol=1e-5)


def test_flow_eps_space_and_uniform_sigma_grid():
    cfg = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    uni = objective_from_config(cfg, grid="uniform_sigma")
    torch.testing.assert_close(uni.sigmas[[0, 499, 999]], torch.tensor([0.001, 0.5, 1.0], dtype=torch.float64))
    shifted = flow_sigmas(cfg)
    assert shifted[499] == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    obj = objective_from_config(cfg, error_space="eps")
    x0, eps, t = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.tensor([5, 400, 900])
    x_t, _ = obj.noise(x0, t, eps)
    pred, target = obj.compare(eps - x0, x0, x_t, eps, t)  # the exact velocity converts to the exact ε
    torch.testing.assert_close(pred, eps, rtol=1e-5, atol=1e-5)
    assert torch.equal(target, eps)


def test_unknown_objectives_are_one_line_input_errors():
    with pytest.raises(InputError, match="unknown training objective: scheduler KarrasVeScheduler") as e:
        objective_from_config({"_class_name": "KarrasVeScheduler", "sigma_min": 0.02})
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="unknown prediction type 'score'"):
        objective_from_config({"_class_name": "DDPMScheduler", "beta_schedule": "linear", "prediction_type": "score"})
    with pytest.raises(InputError, match="error space must be one of eps, native, got 'x0'"):
        objective_from_config({"_class_name": "DDPMScheduler", "beta_schedule": "linear"}, error_space="x0")
    with pytest.raises(InputError, match="use_karras_sigmas"):
        objective_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_karras_sigmas": True})
    with pytest.raises(InputError, match="image size is needed"):
        objective_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True})


def test_log_l2_is_the_log_of_the_l2_error(tiny_sd):
    from diffusion_classifier.engine import denoising_error

    m = load_text_conditional(str(tiny_sd))
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    conds = m.encode_prompts(["zero", "one", "two"])
    noise = torch.randn(20, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    scorer = Scorer(m.denoiser, DDPMObjective(m.alphas_cumprod, "epsilon"), noise, batch_size=5)
    jobs = Jobs.build([0, 1, 0, 1, 0, 1], [0, 1, 2, 0, 1, 2], [3, 200, 500, 700, 900, 999], [0, 1, 2, 3, 4, 5])
    l2 = scorer.evaluate(latents, conds, jobs, "l2")
    torch.testing.assert_close(scorer.evaluate(latents, conds, jobs, "log_l2"), l2.log(), rtol=1e-5, atol=1e-6)
    # an exact prediction has a finite log error
    x = torch.randn(2, 3, 4, 4)
    assert torch.isfinite(denoising_error(x, x, "log_l2")).all()


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_flow_eps_space_error_is_a_timestep_weighting_of_the_velocity_error(loss):
    from diffusion_classifier.engine import denoising_error

    cfg = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    native, eps_space = objective_from_config(cfg, error_space="native"), objective_from_config(cfg, error_space="eps")
    g = torch.Generator().manual_seed(0)
    x0, eps, out = (torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 250, 600, 999])
    x_t, _ = native.noise(x0, t, eps)
    e_native = denoising_error(*reversed(native.compare(out, x0, x_t, eps, t)), loss)
    e_eps = denoising_error(*reversed(eps_space.compare(out, x0, x_t, eps, t)), loss)
    w = native.eps_error_weights(loss)
    torch.testing.assert_close(e_eps, w[t] * e_native)
    assert w[0] > w[999] and not torch.allclose(e_eps, e_native)  # a real reweighting: low σ counts more
    with pytest.raises(InputError, match="l1 and l2 only"):
        native.eps_error_weights("huber")


def test_non_finite_errors_are_an_input_error_not_a_prediction():
    """A denoiser that overflows (a half-precision run, NaN weights) gives NaN errors, which argmin would read as
    class 0: the engine refuses them."""
    ab = torch.linspace(0.999, 0.01, 1000)
    noise = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    jobs = Jobs.build([0, 0], [0, 1], [10, 500], [0, 1])
    latents, conds = torch.zeros(1, 1, 2, 2), torch.zeros(2, 3)
    fine = Scorer(lambda x, t, c: x * 0.5, DDPMObjective(ab, "epsilon"), noise).evaluate(latents, conds, jobs)
    assert torch.isfinite(fine).all()

    def overflowing(x, t, c):
        return torch.where(c[:, :1, None, None] > 0, torch.full_like(x, float("nan")), x)

    with pytest.raises(InputError, match=r"the denoiser's errors are not finite \(1 NaN, 0 infinite of 2\)"):
        Scorer(overflowing, DDPMObjective(ab, "epsilon"), noise).evaluate(latents, torch.tensor([[0.0] * 3, [1.0] * 3]),
                                                                          jobs)
