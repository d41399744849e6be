"""Denoising errors computed once and kept on disk, so that many statistical rules can be compared on the same
images at the cost of the evaluations any of them asks for (the union), not the sum.

Every rule of the statistical schedule with the same max_samples asks for the k-th stratified timestep with noise
row k, so an error is fixed by (image, candidate, timestep) and a rule replayed from this table computes exactly
what a real run of it would.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from diffusion_classifier.engine import Jobs
from diffusion_classifier.records import atomic_write_bytes
from diffusion_classifier.schedules.statistical import stratified_timesteps


class LazyErrors:
    """evaluate(jobs) for statistical_classify: answers from the table, computes (with `compute`) only the jobs
    it lacks, and saves the table atomically at most every `save_every_s` seconds of computing (and on `save()`).
    `key` names what the table holds (model, images, prompts, loss); a table saved under another key is not reused.
    """

    def __init__(self, compute, n_images: int, n_candidates: int, max_samples: int, path: Path, key: str,
                 T: int = 1000, save_every_s: float = 60.0):
        self.compute, self.path, self.key, self.save_every_s = compute, path, key, save_every_s
        self.row = torch.full((T,), -1, dtype=torch.long)  # noise row = position of t in the stratified order
        self.row[torch.tensor(stratified_timesteps(max_samples, T))] = torch.arange(max_samples)
        self.table = torch.full((n_images, n_candidates, max_samples), float("nan"))
        self.saved_at, self.unsaved = time.monotonic(), False
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["key"] == key and saved["table"].shape == self.table.shape:
                self.table = saved["table"]
        self.asked = 0  # evaluations asked for since the last reset (what the rule costs)
        self.computed = 0  # evaluations this process computed (what the table lacked)

    def __call__(self, jobs: Jobs) -> torch.Tensor:
        if not torch.equal(self.row[jobs.t], jobs.noise):
            raise ValueError("a job's noise row is not its timestep's position in the stratified order")
        self.asked += len(jobs)
        missing = torch.isnan(self.table[jobs.image, jobs.cond, jobs.noise]).nonzero().flatten()
        if len(missing):
            sub = Jobs(jobs.image[missing], jobs.cond[missing], jobs.t[missing], jobs.noise[missing])
            self.table[sub.image, sub.cond, sub.noise] = self.compute(sub).float().flatten()
            self.computed += len(sub)
            self.unsaved = True
            if time.monotonic() - self.saved_at > self.save_every_s:
                self.save()
        return self.table[jobs.image, jobs.cond, jobs.noise]

    def save(self) -> None:
        if self.unsaved:
            atomic_write_bytes(self.path, lambda f: torch.save({"key": self.key, "table": self.table}, f))
        self.saved_at, self.unsaved = time.monotonic(), False

    def cost(self) -> int:
        """Evaluations asked for since the last call (and reset the count)."""
        asked, self.asked = self.asked, 0
        return asked
