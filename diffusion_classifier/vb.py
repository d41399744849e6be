"""β schedules of scheduler configs; variational-bound terms of a learned-variance model (Nichol & Dhariwal 2021; DiT)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from .errors import InputError

LN2 = math.log(2.0)
# diffusers' DDPMScheduler defaults, used when a config leaves a field out.
DEFAULT_NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_BETA_START = 1e-4
DEFAULT_BETA_END = 0.02
DEFAULT_BETA_SCHEDULE = "linear"
COSINE_MAX_BETA = 0.999


def linear_betas(T: int = 1000, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """Linear beta schedule (Ho et al. 2020), float64 (T,)."""
    return torch.linspace(start, end, T, dtype=torch.float64)


def _cosine_betas(T: int, max_beta: float = COSINE_MAX_BETA) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17) as betas capped at max_beta, float64 (T,)."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1.0 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


def betas_from_config(config: Mapping) -> torch.Tensor:
    """Float64 betas (T,) of a diffusers scheduler config: trained_betas, linear, scaled_linear, squaredcos_cap_v2."""
    if config.get("rescale_betas_zero_snr", False):
        raise InputError("scheduler config: expected rescale_betas_zero_snr false, found true (not supported)")
    trained = config.get("trained_betas")
    if trained is not None:
        return torch.as_tensor(trained, dtype=torch.float64).flatten()
    T = int(config.get("num_train_timesteps", DEFAULT_NUM_TRAIN_TIMESTEPS))
    start = float(config.get("beta_start", DEFAULT_BETA_START))
    end = float(config.get("beta_end", DEFAULT_BETA_END))
    kind = config.get("beta_schedule", DEFAULT_BETA_SCHEDULE)
    if kind == "linear":
        return linear_betas(T, start, end)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, T, dtype=torch.float64) ** 2  # latent-diffusion schedule
    if kind == "squaredcos_cap_v2":
        return _cosine_betas(T)
    raise InputError(
        f"scheduler config: expected beta_schedule 'linear', 'scaled_linear' or 'squaredcos_cap_v2', found {kind!r}"
    )


def alphas_cumprod_from_config(config: Mapping) -> torch.Tensor:
    """ᾱ_t = prod_{s<=t} (1 - β_s), float64 (T,), of a diffusers scheduler config."""
    return torch.cumprod(1.0 - betas_from_config(config), 0)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Per-timestep constants of q(x_t|x_0) and the posterior q(x_{t-1}|x_t,x_0), all float64 (T,)."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.shape[0]

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> NoiseSchedule:
        """Schedule from betas (T,), T >= 2, each in (0, 1]; computed in float64."""
        betas = torch.as_tensor(betas).detach().to(device="cpu", dtype=torch.float64)
        if betas.ndim != 1 or betas.shape[0] < 2:
            raise InputError(f"betas: expected a 1-D tensor of at least 2 steps, found shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise InputError(f"betas: expected values in (0, 1], found range [{betas.min():.6g}, {betas.max():.6g}]")
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        # post_var[0] is 0, so its log is replaced by that of step 1.
        post_lv_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        return cls(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            sqrt_recip_alphas_cumprod=torch.sqrt(1.0 / ac),
            sqrt_recipm1_alphas_cumprod=torch.sqrt(1.0 / ac - 1.0),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_lv_clipped,
            posterior_mean_coef1=betas * torch.sqrt(ac_prev) / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * torch.sqrt(alphas) / (1.0 - ac),
        )

    def to(self, device) -> NoiseSchedule:
        """The same schedule with its tables on `device` (still float64)."""
        return NoiseSchedule(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) so it broadcasts against `like` (B, ...)."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] of a float64 table (T,), rounded once to like's dtype: (B, 1, ..., 1) on like's device."""
    return _per_sample(table.to(t.device)[t].to(like.dtype), like)


def split_learned_variance(model_output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, H, W) output of a learned-variance model -> (eps_hat, v), each (B, C, H, W), v in [-1, 1]."""
    if model_output.ndim < 2 or model_output.shape[1] != 2 * channels:
        raise InputError(
            f"model output: expected {2 * channels} channels (eps and variance for {channels}), "
            f"found shape {tuple(model_output.shape)}"
        )
    return model_output[:, :channels], model_output[:, channels:]


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Tanh approximation of the standard normal CDF (Page 1977), as in improved DDPM."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability (nats) of x in [-1, 1] quantised to 256 bins under N(means, e^(2 log_scales))."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))  # lowest bin extends to -inf
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))  # highest bin extends to +inf
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_kl_and_nll(
    noise_schedule: NoiseSchedule,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    eps_hat: torch.Tensor,
    v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (B,) KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)) and decoder NLL -log p_theta(x_0|x_1), bits/dim.

    Computed in x0's dtype (the schedule's constants rounded once to it); inputs (B, C, H, W), t (B,), unchecked.
    """
    s, dims = noise_schedule, tuple(range(1, x0.ndim))
    # learned-range variance (improved DDPM eq. 15): log sigma^2 = frac log beta_t + (1 - frac) log beta~_t (clipped)
    frac = (v + 1.0) / 2.0
    true_logvar = _at(s.posterior_log_variance_clipped, t, x0)  # (B, 1, 1, 1)
    model_logvar = frac * _at(torch.log(s.betas), t, x0) + (1.0 - frac) * true_logvar
    # x0_hat = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps_hat; posterior means mu~ = coef1 x0 + coef2 x_t
    x0_hat = _at(s.sqrt_recip_alphas_cumprod, t, x0) * x_t - _at(s.sqrt_recipm1_alphas_cumprod, t, x0) * eps_hat
    coef1, coef2 = _at(s.posterior_mean_coef1, t, x0), _at(s.posterior_mean_coef2, t, x0)
    model_mean = coef1 * x0_hat + coef2 * x_t
    true_mean = coef1 * x0 + coef2 * x_t

    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).mean(dim=dims) / LN2
    log_probs = discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)
    nll = -log_probs.mean(dim=dims) / LN2
    return kl, nll


def vlb_term(
    noise_schedule: NoiseSchedule,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    eps_hat: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """Per-sample (B,) L_t of the variational bound, bits/dim, in x0's dtype: L_0 = -log p_theta(x_0|x_1) at t = 0,
    KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)) for t > 0 (the L_vlb of improved DDPM's hybrid loss)."""
    kl, nll = vb_kl_and_nll(noise_schedule, x0, x_t, t, eps_hat, v)
    return torch.where(t == 0, nll, kl)


def vb_terms(
    noise_schedule: NoiseSchedule,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    eps_hat: torch.Tensor,
    v: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per-sample float64 (B,) mse, l1, vb (KL(q(x_{t-1}|x_t,x_0) || p_theta), bits/dim), nll (decoder, bits/dim)."""
    shape = x0.shape
    for name, tensor in (("x_t", x_t), ("eps", eps), ("eps_hat", eps_hat), ("v", v)):
        if tensor.shape != shape:
            raise InputError(f"vb_terms: expected {name} of shape {tuple(shape)} (as x0), found {tuple(tensor.shape)}")
    if t.ndim != 1 or t.shape[0] != shape[0]:
        raise InputError(f"vb_terms: expected t of shape ({shape[0]},), found {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= noise_schedule.T):
        found = f"[{int(t.min())}, {int(t.max())}]"
        raise InputError(f"vb_terms: expected timesteps in [0, {noise_schedule.T - 1}], found {found}")

    # float64 throughout; MPS has no float64, so it falls back to the CPU
    device = torch.device("cpu") if x0.device.type == "mps" else x0.device
    x0, x_t, eps, eps_hat, v = (a.to(device=device, dtype=torch.float64) for a in (x0, x_t, eps, eps_hat, v))
    t = t.to(device=device, dtype=torch.long)

    dims = tuple(range(1, x0.ndim))
    diff = eps - eps_hat
    mse = (diff**2).mean(dim=dims)
    l1 = diff.abs().mean(dim=dims)
    kl, nll = vb_kl_and_nll(noise_schedule, x0, x_t, t, eps_hat, v)
    return {"mse": mse, "l1": l1, "vb": kl, "nll": nll}
