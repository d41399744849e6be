"""DDPM pieces shared by the DDPM-family kinds (digits-sd, its v-prediction variant, digits-dit): the diffusers
scheduler, the library's noise schedule and objective on its betas, and the noising `common.fit` uses."""
from __future__ import annotations

import torch

from ..objectives import DDPMObjective
from ..vb import NoiseSchedule

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


def scheduler_noise_schedule(scheduler) -> NoiseSchedule:
    """The scheduler's noise schedule: float64 (T,) tables from its own (float32) betas, as it noises."""
    return NoiseSchedule.from_betas(scheduler.betas)


def training_objective(scheduler) -> DDPMObjective:
    """What the model is trained on: the scheduler's prediction type against its own target (native error space),
    with sqrt(ᾱ_t) and sqrt(1-ᾱ_t) rounded once from float64."""
    return DDPMObjective(scheduler_noise_schedule(scheduler).alphas_cumprod, scheduler.config.prediction_type, "native",
                         float64_coefficients=True)


class DdpmNoising:
    """Uniform integer timesteps in [0, T) and the objective's forward process (the noising `common.fit` uses)."""

    def __init__(self, objective: DDPMObjective):
        self.objective = objective

    def draw_times(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.objective.T, (batch,), generator=gen)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) eps: (B, C, H, W)."""
        return self.objective.noise(x0, t, eps)[0]
