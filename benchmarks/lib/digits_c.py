"""The digits_c full-evaluation runs: which (corruption, severity) sets, and the run folder of each model and set."""
from __future__ import annotations

from pathlib import Path

from diffusion_classifier.data.registry import digits_c_dir
from diffusion_classifier.runs import RunDescription, Setting

from . import CACHE
from .replay import N_TIMESTEPS

# (corruption, severity) in the order they are computed; None is the clean test split
SETS = [(None, None), ("gaussian_noise", 3), ("gaussian_blur", 3), ("contrast", 3), ("gaussian_noise", 5),
        ("shot_noise", 3), ("pixelate", 3), ("impulse_noise", 3), ("defocus_blur", 3), ("fog", 3), ("brightness", 3),
        ("speckle_noise", 3), ("gaussian_blur", 5), ("contrast", 5), ("gaussian_noise", 1), ("gaussian_blur", 1),
        ("contrast", 1), ("shot_noise", 5), ("pixelate", 5), ("impulse_noise", 5)]


def set_name(corruption, severity) -> str:
    return "digits" if corruption is None else digits_c_dir(corruption, severity)


def full_run(model: str, corruption, severity, seed: int = 0) -> RunDescription:
    """CACHE/<model>/<set>/full<N>_stratified: every class at the N stratified timesteps, noise from `seed`."""
    return RunDescription(f"{model}/{set_name(corruption, severity)}", (
        Setting({"model": model, "corruption": corruption, "severity": severity}, ""),
        Setting({"timesteps": N_TIMESTEPS}, f"full{N_TIMESTEPS}"),
        Setting({"order": "stratified"}, "_stratified"),
        Setting({"noise": f"seed {seed}"}, ""),  # one seed per cache
    ))


def run_folder(model: str, corruption, severity) -> Path:
    return full_run(model, corruption, severity).folder(CACHE)
