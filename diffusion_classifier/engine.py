"""The scoring engine: paired (t, ε) denoising errors for any denoiser, packed into full batches.

A *job* is one denoiser evaluation: (image index, condition index, timestep, noise index). Every
script (Stable Diffusion prompts, DiT classes, Winoground pairs) describes its work as a list of
jobs; the engine packs them into batches, asks the objective (objectives.py) to noise the latents
with the shared noise bank, runs the denoiser, asks the objective what the output is compared with,
and reduces each output to per-job numbers, keeping everything on the device until the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from .errors import InputError
from .noise import check_noise
from .objectives import as_objective

LOSSES = ("l2", "l1", "huber", "log_l2")
LOG_LOSSES = ("log_l2",)  # errors that are logs: schedules read differences of them as ratios
LOG_FLOOR = 1e-20  # log_l2 of an exact prediction: a finite error


class Denoiser(Protocol):
    """Anything that maps (x_t (B,C,H,W), t (B,), cond (B,...)) to a model output (B,C',H,W).

    t is the timestep the objective gives the model (the index for DDPM models, σ·T for flow models).
    """

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor: ...


class Conditions:
    """Several per-condition tensors with the same leading size K (e.g. prompt and pooled embeddings)."""

    def __init__(self, **parts: torch.Tensor):
        sizes = {len(v) for v in parts.values()}
        assert len(sizes) == 1, f"condition parts differ in their leading size: {sizes}"
        self.parts = parts

    def __len__(self) -> int:
        return len(next(iter(self.parts.values())))

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, idx) -> "Conditions":
        return Conditions(**{k: v[idx] for k, v in self.parts.items()})

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self.__dict__["parts"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Conditions":
        return Conditions(**{k: v.to(device, dtype if (dtype is not None and v.is_floating_point()) else v.dtype)
                             for k, v in self.parts.items()})

    @staticmethod
    def cat(items: list["Conditions"]) -> "Conditions":
        return Conditions(**{k: torch.cat([c.parts[k] for c in items]) for k in items[0].parts})


def cat_conditions(items: list):
    """Concatenate condition tensors or Conditions along the condition axis."""
    return Conditions.cat(items) if isinstance(items[0], Conditions) else torch.cat(items)


def _to_device(conds, device, dtype):
    if isinstance(conds, Conditions):
        return conds.to(device, dtype)
    conds = conds.to(device)
    return conds.to(dtype) if conds.is_floating_point() else conds


@dataclass
class Jobs:
    """Parallel int64 index vectors, one entry per denoiser evaluation."""

    image: torch.Tensor  # (J,) index into the latents
    cond: torch.Tensor  # (J,) index into the conditions
    t: torch.Tensor  # (J,) timestep
    noise: torch.Tensor  # (J,) index into the noise bank

    def __post_init__(self):
        n = len(self.t)
        for name in ("image", "cond", "noise"):
            assert len(getattr(self, name)) == n, f"jobs.{name} has a different length"

    def __len__(self) -> int:
        return len(self.t)

    @staticmethod
    def build(image, cond, t, noise) -> "Jobs":
        as_long = lambda v: torch.as_tensor(v, dtype=torch.long).reshape(-1)
        return Jobs(as_long(image), as_long(cond), as_long(t), as_long(noise))

    @staticmethod
    def cat(parts: list["Jobs"]) -> "Jobs":
        return Jobs(*(torch.cat([getattr(p, k) for p in parts]) for k in ("image", "cond", "t", "noise")))


@dataclass
class Batch:
    """What a reducer sees for one batch of jobs (all float32)."""

    x0: torch.Tensor  # (B, C, H, W) clean latents
    x_t: torch.Tensor  # (B, C, H, W) noised latents
    eps: torch.Tensor  # (B, C, H, W) the noise added
    out: torch.Tensor  # (B, C', H, W) raw model output, C' = C or 2C (learned variance)
    t: torch.Tensor  # (B,) timestep indices
    pred: torch.Tensor | None = None  # (B, C, H, W) the output in the objective's error space
    target: torch.Tensor | None = None  # (B, C, H, W) what `pred` is compared with

    def __post_init__(self):
        if self.pred is None:  # an ε-prediction model compared in ε-space
            self.pred, self.target = self.eps_hat, self.eps

    @property
    def eps_hat(self) -> torch.Tensor:
        return self.out[:, : self.eps.shape[1]]


def denoising_error(eps: torch.Tensor, eps_hat: torch.Tensor, loss: str = "l2") -> torch.Tensor:
    """Per-sample mean over (C, H, W) of the l2 (squared), l1 or huber error between ε and ε̂; log_l2: the log of
    the l2 error, so that classes are compared by their relative difference at each (t, ε) (the mean over
    timesteps is then the log of the geometric mean error) rather than by an absolute one that the large errors
    of a few timesteps dominate."""
    if loss == "log_l2":
        return denoising_error(eps, eps_hat, "l2").clamp_min(LOG_FLOOR).log()
    if loss == "l2":
        err = F.mse_loss(eps_hat, eps, reduction="none")
    elif loss == "l1":
        err = F.l1_loss(eps_hat, eps, reduction="none")
    elif loss == "huber":
        err = F.huber_loss(eps_hat, eps, reduction="none", delta=1.0)
    else:
        raise InputError(f"loss must be one of {LOSSES}, got {loss!r}")
    return err.flatten(1).mean(1)  # (B,)


def loss_reducer(loss: str) -> Callable[[Batch], torch.Tensor]:
    """A reducer that returns each job's denoising error."""
    if loss not in LOSSES:
        raise InputError(f"loss must be one of {LOSSES}, got {loss!r}")
    return lambda b: denoising_error(b.target, b.pred, loss)


class Scorer:
    """Evaluates jobs against fixed latents, conditions and noise bank with one denoiser.

    `objective` (objectives.py) forms x_t and says what the output is compared with; a ᾱ table (T,)
    stands for the ε-prediction DDPM objective. Nothing here draws randomness: the noise bank is an
    input. Inputs are moved to `device` once; results stay on the device until `evaluate` returns
    them on the CPU.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        objective,
        noise_bank: torch.Tensor,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        pad_to_batch: bool = False,
    ):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.denoiser = denoiser
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        # static shapes: a short last batch is filled up with copies of its last job (results dropped),
        # so a compiled denoiser (CUDA graphs) sees one batch shape and never recompiles
        self.pad_to_batch = pad_to_batch
        self.objective = as_objective(objective).to(self.device)  # schedule math in float64, cast per batch
        self.noise_bank = noise_bank.to(device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def evaluate(
        self,
        latents: torch.Tensor,
        conds: torch.Tensor,
        jobs: Jobs,
        reduce: Callable[[Batch], torch.Tensor] | str = "l2",
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Run every job; returns reduce's output per job, concatenated on the CPU: (J, ...)."""
        if isinstance(reduce, str):
            reduce = loss_reducer(reduce)
        if len(jobs) == 0:
            return torch.empty(0)
        check_noise(self.noise_bank, tuple(latents.shape[1:]), int(jobs.noise.max()) + 1)
        latents = latents.to(self.device, torch.float32)
        conds = _to_device(conds, self.device, self.dtype)
        idx = {k: getattr(jobs, k).to(self.device) for k in ("image", "cond", "t", "noise")}
        results = []
        for start in range(0, len(jobs), self.batch_size):
            sl = slice(start, start + self.batch_size)
            rows = {k: v[sl] for k, v in idx.items()}
            n = len(rows["t"])
            if self.pad_to_batch and n < self.batch_size:
                fill = torch.full((self.batch_size - n,), n - 1, device=self.device)
                rows = {k: torch.cat([v, v[fill]]) for k, v in rows.items()}
            t = rows["t"]
            x0 = latents[rows["image"]]  # (B, C, H, W)
            eps = self.noise_bank[rows["noise"]]  # (B, C, H, W)
            x_t, model_t = self.objective.noise(x0, t, eps)
            out = self.denoiser(x_t.to(self.dtype), model_t, conds[rows["cond"]]).float()
            if n < len(t):  # padded: the reducer sees the real jobs only
                x0, x_t, eps, out, t = x0[:n], x_t[:n], eps[:n], out[:n], t[:n]
            pred, target = self.objective.compare(out, x0, x_t, eps, t)
            results.append(reduce(Batch(x0=x0, x_t=x_t, eps=eps, out=out, t=t, pred=pred, target=target)))
            if progress is not None:
                progress(n)
        out = torch.cat(results).cpu()  # the only host-device sync
        if out.is_floating_point() and not bool(torch.isfinite(out).all()):
            raise InputError(f"the denoiser's errors are not finite ({int(torch.isnan(out).sum())} NaN, "
                             f"{int(torch.isinf(out).sum())} infinite of {out.numel()}) in {self.dtype}: "
                             + ("an overflow of the half-precision run (run in float32: --dtype float32)"
                                if self.dtype in (torch.float16, torch.bfloat16) else
                                "the model's weights or inputs hold NaN or huge values")
                             + "; no record of these images is written")
        return out
