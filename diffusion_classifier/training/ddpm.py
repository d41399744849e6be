"""DDPM pieces shared by the DDPM-family kinds (digits-sd, its v-prediction variant, digits-dit): the
scheduler, its float64 tables and the forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
from __future__ import annotations

import torch

BETA_RANGES = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}


def make_scheduler(beta_schedule: str, variance_type: str, clip_sample: bool, steps_offset: int,
                   prediction_type: str = "epsilon"):
    """1000-step DDPM scheduler."""
    from diffusers import DDPMScheduler

    beta_start, beta_end = BETA_RANGES[beta_schedule]
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=beta_start, beta_end=beta_end, beta_schedule=beta_schedule,
        variance_type=variance_type, clip_sample=clip_sample, steps_offset=steps_offset, prediction_type=prediction_type,
    )


def schedule_tables(scheduler) -> dict[str, torch.Tensor]:
    """Forward process and posterior q(x_{t-1} | x_t, x_0) tables in float64, from the scheduler's betas."""
    betas = scheduler.betas.double()
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    return {
        "sqrt_abar": abar.sqrt(),
        "sqrt_1m_abar": (1 - abar).sqrt(),
        "sqrt_recip_abar": (1 / abar).sqrt(),
        "sqrt_recipm1_abar": (1 / abar - 1).sqrt(),
        "log_betas": betas.log(),
        "post_log_var_clipped": torch.cat([post_var[1:2], post_var[1:]]).log(),  # entry 0 repeats entry 1
        "coef1": betas * abar_prev.sqrt() / (1 - abar),
        "coef2": (1 - abar_prev) * alphas.sqrt() / (1 - abar),
    }


def gather(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """table[t] as float32, shaped (N, 1, 1, 1) to broadcast over images."""
    return table[t].float()[:, None, None, None]



class DdpmNoising:
    """Uniform integer timesteps in [0, 1000) and the DDPM forward process (the noising `common.fit` uses)."""

    def __init__(self, tables: dict[str, torch.Tensor]):
        self.tables = tables

    def draw_times(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 1000, (batch,), generator=gen)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return gather(self.tables["sqrt_abar"], t) * x0 + gather(self.tables["sqrt_1m_abar"], t) * eps

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (the v-prediction target)."""
        return gather(self.tables["sqrt_abar"], t) * eps - gather(self.tables["sqrt_1m_abar"], t) * x0
