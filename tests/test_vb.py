"""Tests of the learned-variance variational-bound terms against closed forms and a plain numpy implementation."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from diffusion_classifier.objectives import DDPMObjective
from diffusion_classifier.vb import (
    NoiseSchedule,
    betas_from_config,
    linear_betas,
    split_learned_variance,
    vb_kl_and_nll,
    vb_terms,
    vlb_term,
)

SHAPE = (3, 4, 5)  # C, H, W


@pytest.fixture(scope="module")
def noise_schedule():
    return NoiseSchedule.from_betas(linear_betas())


def make_batch(noise_schedule, t, seed=0, dtype=torch.float64):
    """x0 on the 256-level grid in [-1, 1], noise, x_t and a perturbed prediction for timesteps t."""
    g = torch.Generator().manual_seed(seed)
    t = torch.as_tensor(t, dtype=torch.long)
    B = t.shape[0]
    x0 = (torch.randint(0, 256, (B, *SHAPE), generator=g).to(dtype) / 127.5 - 1.0)
    eps = torch.randn(B, *SHAPE, generator=g, dtype=dtype)
    eps_hat = eps + 0.3 * torch.randn(B, *SHAPE, generator=g, dtype=dtype)
    v = torch.rand(B, *SHAPE, generator=g, dtype=dtype) * 2 - 1
    x_t, _ = DDPMObjective(noise_schedule.alphas_cumprod).noise(x0, t, eps)
    return x0, x_t, t, eps, eps_hat, v


def numpy_schedule(T=1000, start=1e-4, end=0.02):
    betas = np.linspace(start, end, T, dtype=np.float64)
    alphas = 1.0 - betas
    ab = np.cumprod(alphas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
    return betas, alphas, ab, ab_prev, post_var


def numpy_vb(x0, x_t, t, eps, eps_hat, v):
    """Plain per-sample, per-element loop implementation of mse, l1, KL and decoder NLL (bits/dim)."""
    betas, alphas, ab, ab_prev, post_var = numpy_schedule()
    out = {k: [] for k in ("mse", "l1", "vb", "nll")}
    for b in range(x0.shape[0]):
        s = int(t[b])
        true_lv = math.log(post_var[1] if s == 0 else post_var[s])
        c1 = betas[s] * math.sqrt(ab_prev[s]) / (1 - ab[s])
        c2 = (1 - ab_prev[s]) * math.sqrt(alphas[s]) / (1 - ab[s])
        sq, kl, nll = [], [], []
        for x, xt, e, eh, vv in zip(*(a[b].ravel() for a in (x0, x_t, eps, eps_hat, v))):
            lv = (vv + 1) / 2 * math.log(betas[s]) + (1 - (vv + 1) / 2) * true_lv
            x0_hat = xt / math.sqrt(ab[s]) - math.sqrt(1 / ab[s] - 1) * eh
            mu_p = c1 * x0_hat + c2 * xt
            mu_q = c1 * x + c2 * xt
            kl.append(0.5 * (-1 + lv - true_lv + math.exp(true_lv - lv) + (mu_q - mu_p) ** 2 * math.exp(-lv)))
            sigma = math.exp(0.5 * lv)

            def cdf(z):
                return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))

            upper = cdf((x - mu_p + 1 / 255) / sigma)
            lower = cdf((x - mu_p - 1 / 255) / sigma)
            if x < -0.999:
                p = upper
            elif x > 0.999:
                p = 1 - lower
            else:
                p = upper - lower
            nll.append(-math.log(max(p, 1e-12)))
            sq.append(e - eh)
        sq = np.array(sq)
        out["mse"].append(np.mean(sq**2))
        out["l1"].append(np.mean(np.abs(sq)))
        out["vb"].append(np.mean(kl) / math.log(2))
        out["nll"].append(np.mean(nll) / math.log(2))
    return {k: np.array(a) for k, a in out.items()}


def test_noise_schedule_constants(noise_schedule):
    betas, alphas, ab, ab_prev, post_var = numpy_schedule()
    assert noise_schedule.T == 1000
    fields = ("betas", "posterior_variance", "alphas_cumprod")
    assert all(getattr(noise_schedule, f).dtype == torch.float64 for f in fields)
    np.testing.assert_allclose(noise_schedule.alphas_cumprod.numpy(), ab, rtol=1e-12)
    np.testing.assert_allclose(noise_schedule.alphas_cumprod_prev.numpy(), ab_prev, rtol=1e-12)
    np.testing.assert_allclose(noise_schedule.posterior_variance.numpy(), post_var, rtol=1e-12, atol=0)
    lv = noise_schedule.posterior_log_variance_clipped.numpy()
    assert lv[0] == lv[1] == pytest.approx(math.log(post_var[1]), rel=1e-12)
    np.testing.assert_allclose(lv[1:], np.log(post_var[1:]), rtol=1e-12)
    coef1 = betas * np.sqrt(ab_prev) / (1 - ab)
    np.testing.assert_allclose(noise_schedule.posterior_mean_coef1.numpy(), coef1, rtol=1e-12)


def test_from_betas_rejects_bad_input():
    with pytest.raises(ValueError, match=r"expected values in \(0, 1\]"):
        NoiseSchedule.from_betas(torch.tensor([0.1, 0.0, 0.2]))
    with pytest.raises(ValueError, match="at least 2 steps"):
        NoiseSchedule.from_betas(torch.tensor([0.1]))


def test_split_learned_variance():
    out = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).reshape(2, 6, 2, 2)
    eps_hat, v = split_learned_variance(out, 3)
    assert torch.equal(eps_hat, out[:, :3]) and torch.equal(v, out[:, 3:])
    with pytest.raises(ValueError, match="expected 8 channels"):
        split_learned_variance(out, 4)


def test_kl_zero_for_perfect_prediction(noise_schedule):
    x0, x_t, t, eps, _, _ = make_batch(noise_schedule, [0, 1, 2, 10, 250, 500, 998, 999])
    terms = vb_terms(noise_schedule, x0, x_t, t, eps, eps.clone(), -torch.ones_like(eps))
    assert terms["vb"].abs().max().item() < 1e-10
    assert terms["mse"].abs().max().item() == 0.0 and terms["l1"].abs().max().item() == 0.0


def test_kl_closed_form_at_min_variance(noise_schedule):
    t = torch.tensor([1, 2, 5, 50, 300, 700, 999])
    x0, x_t, t, eps, eps_hat, _ = make_batch(noise_schedule, t, seed=1)
    terms = vb_terms(noise_schedule, x0, x_t, t, eps, eps_hat, -torch.ones_like(eps))
    # v = -1: sigma^2 = posterior variance, and x0 - x0_hat = sqrt(1/ab - 1) (eps_hat - eps), so
    # KL = coef1^2 (1/ab - 1) mse / (2 sigma^2) = beta^2 / (2 sigma^2 alpha (1 - ab)) mse
    s = noise_schedule
    factor = s.betas[t] ** 2 / (2 * s.posterior_variance[t] * s.alphas[t] * (1 - s.alphas_cumprod[t]))
    expected = factor * terms["mse"] / math.log(2)
    torch.testing.assert_close(terms["vb"], expected, rtol=1e-9, atol=0)


def test_kl_nonnegative_on_random_inputs(noise_schedule):
    t = torch.arange(0, 1000, 37)
    x0, x_t, t, eps, eps_hat, v = make_batch(noise_schedule, t, seed=2)
    terms = vb_terms(noise_schedule, x0, x_t, t, eps, eps_hat, v)
    assert terms["vb"].shape == (t.shape[0],)
    assert (terms["vb"] >= 0).all()
    # the variance mismatch alone already makes every KL strictly positive
    assert (terms["vb"] > 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vb_terms_match_plain_implementation(noise_schedule, dtype):
    t = torch.tensor([0, 1, 3, 100, 600, 999])
    x0, x_t, t, eps, eps_hat, v = make_batch(noise_schedule, t, seed=3, dtype=dtype)
    # exercise both edge bins with confident means
    x0[0, 0, 0, :2] = torch.tensor([-1.0, 1.0], dtype=dtype)
    terms = vb_terms(noise_schedule, x0, x_t, t, eps, eps_hat, v)
    x0_np, x_t_np, eps_np, eps_hat_np, v_np = (a.double().numpy() for a in (x0, x_t, eps, eps_hat, v))
    ref = numpy_vb(x0_np, x_t_np, t.numpy(), eps_np, eps_hat_np, v_np)
    for key in ("mse", "l1", "vb", "nll"):
        assert terms[key].dtype == torch.float64
        np.testing.assert_allclose(terms[key].numpy(), ref[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_vb_terms_rejects_bad_input(noise_schedule):
    x0, x_t, t, eps, eps_hat, v = make_batch(noise_schedule, [3, 4])
    with pytest.raises(ValueError, match=r"timesteps in \[0, 999\], found \[3, 1000\]"):
        vb_terms(noise_schedule, x0, x_t, torch.tensor([3, 1000]), eps, eps_hat, v)
    with pytest.raises(ValueError, match="expected v of shape"):
        vb_terms(noise_schedule, x0, x_t, t, eps, eps_hat, v[:, :1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vlb_term_is_the_decoder_nll_at_t0_and_the_kl_after_in_the_inputs_dtype(noise_schedule, dtype):
    t = torch.tensor([0, 0, 1, 5, 500, 999])
    x0, x_t, t, eps, eps_hat, v = make_batch(noise_schedule, t, seed=7, dtype=dtype)
    terms = vb_terms(noise_schedule, x0, x_t, t, eps, eps_hat, v)  # float64 whatever the inputs
    expected = torch.where(t == 0, terms["nll"], terms["vb"])
    kl, nll = vb_kl_and_nll(noise_schedule, x0, x_t, t, eps_hat, v)
    l_t = vlb_term(noise_schedule, x0, x_t, t, eps_hat, v)
    assert l_t.dtype == kl.dtype == nll.dtype == dtype and l_t.shape == (6,)
    if dtype == torch.float64:  # vb_terms is these functions on float64 inputs
        assert torch.equal(kl, terms["vb"]) and torch.equal(nll, terms["nll"]) and torch.equal(l_t, expected)
    else:  # computed in float32, the constants rounded once from float64: float32 rounding only
        torch.testing.assert_close(l_t.double(), expected, rtol=1e-4, atol=1e-6)


def test_vlb_term_trains_only_the_variance_when_eps_hat_is_detached(noise_schedule):
    x0, x_t, t, eps, eps_hat, v = make_batch(noise_schedule, [0, 3, 400], seed=8, dtype=torch.float32)
    eps_hat, v = eps_hat.requires_grad_(), v.requires_grad_()
    vlb_term(noise_schedule, x0, x_t, t, eps_hat.detach(), v).mean().backward()
    assert eps_hat.grad is None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_noise_schedule_moves_every_table():
    moved = NoiseSchedule.from_betas(linear_betas(10)).to("meta")
    assert all(getattr(moved, f.name).device.type == "meta" and getattr(moved, f.name).dtype == torch.float64
               for f in dataclasses.fields(NoiseSchedule))
    assert moved.T == 10


def test_nll_decreases_as_mean_approaches_x0(noise_schedule):
    x0, x_t, t, eps, _, _ = make_batch(noise_schedule, [0, 0], seed=4)
    offset = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    v = -torch.ones_like(x0)  # smallest variance
    s = noise_schedule
    nlls = []
    for scale in (0.5, 0.1, 0.03, 0.01, 0.003, 0.0):
        # at t = 0, coef1 = 1 and coef2 = 0: the model mean is x0_hat; choose eps_hat to place it at x0 + scale * offset
        x0_hat = x0 + scale * offset
        eps_hat = (s.sqrt_recip_alphas_cumprod[0] * x_t - x0_hat) / s.sqrt_recipm1_alphas_cumprod[0]
        nll = vb_terms(s, x0, x_t, t, eps, eps_hat, v)["nll"]
        assert torch.isfinite(nll).all() and (nll > 0).all()
        nlls.append(nll)
    nlls = torch.stack(nlls)  # (scales, B)
    assert (nlls[1:] < nlls[:-1]).all()
    # an exact mean with sigma close to one bin: about one bit per dim, far below the 8 bits of a uniform guess
    assert (nlls[-1] < 2.0).all()


def test_nll_finite_and_positive_at_many_timesteps(noise_schedule):
    t = torch.arange(0, 1000, 111)
    x0, x_t, t, eps, eps_hat, v = make_batch(noise_schedule, t, seed=6)
    nll = vb_terms(noise_schedule, x0, x_t, t, eps, eps_hat, v)["nll"]
    assert torch.isfinite(nll).all() and (nll > 0).all()


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"beta_schedule": "linear", "beta_start": 2e-4, "beta_end": 0.03, "num_train_timesteps": 500},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 200},
    ],
)
def test_betas_from_config_matches_diffusers(config):
    from diffusers import DDPMScheduler

    ours = betas_from_config(config)
    theirs = DDPMScheduler(**config).betas
    assert ours.dtype == torch.float64 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours.numpy(), theirs.double().numpy(), rtol=1e-6, atol=1e-9)


def test_betas_from_config_trained_and_unknown():
    betas = betas_from_config({"trained_betas": [0.1, 0.2, 0.3], "beta_schedule": "linear"})
    assert betas.dtype == torch.float64 and betas.tolist() == pytest.approx([0.1, 0.2, 0.3], abs=1e-15)
    with pytest.raises(ValueError, match="found 'sigmoid'"):
        betas_from_config({"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        betas_from_config({"rescale_betas_zero_snr": True})
