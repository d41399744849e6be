"""Training objectives: how x_t is formed from (x0, t, ε) and what the model output is compared with.

The objective is read from the model's scheduler config:

- DDPM family (any scheduler with a β schedule): x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε, and the model
  predicts `epsilon`, `v_prediction` (v = sqrt(ᾱ)ε - sqrt(1-ᾱ)x0, Salimans & Ho 2022) or `sample` (x0).
  By default errors are measured in ε-space (v and x0 outputs converted to ε̂), as in the paper.
  The network is given the timestep t, or, where an EulerDiscreteScheduler sets `timestep_type`
  'continuous' with v-prediction (EDM-style models), ¼·log σ_t with σ_t = sqrt((1-ᾱ_t)/ᾱ_t), as that scheduler does.
- Flow matching (`FlowMatchEulerDiscreteScheduler`: SD3, SD3.5, Flux): x_t = (1-σ)·x0 + σ·ε and the
  model predicts the velocity ε - x0 (Lipman et al. 2023; Esser et al. 2024). σ of a training
  timestep comes from the scheduler's own mapping, with its shift or resolution-dependent (dynamic)
  shift. By default errors are measured in velocity space.

`error_space='native'` compares the raw output with its own target; `'eps'` converts it to ε̂ first.
`noise` is the one place x_t is formed (`flow_noise` the flow's, also for a continuous σ as in training); the
engine only calls `noise` and `compare`, nothing else depends on the objective.
"""
from __future__ import annotations

import math

import torch

from .errors import InputError

ERROR_SPACES = ("eps", "native")
FLOW_GRIDS = ("timesteps", "uniform_sigma")
FLOW_ERROR_DEFAULT = "eps"  # flow models, --error_space not given: ε̂ = x_t + (1-σ)v̂ against ε (docs/fashion-mnist.md)
DDPM_PREDICTIONS = ("epsilon", "v_prediction", "sample")
DDPM_TIMESTEP_TYPES = ("discrete", "continuous")


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _check_noise_inputs(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> None:
    if eps.shape != x0.shape:
        raise InputError(f"noise: expected eps of shape {tuple(x0.shape)} (as x0), found {tuple(eps.shape)}")
    if t.shape != x0.shape[:1]:
        raise InputError(f"noise: expected t of shape ({x0.shape[0]},), found {tuple(t.shape)}")


def _check_error_space(error_space: str | None, default: str) -> str:
    error_space = error_space or default
    if error_space not in ERROR_SPACES:
        raise InputError(f"error space must be one of {', '.join(ERROR_SPACES)}, got {error_space!r}")
    return error_space


def _check_timestep_type(timestep_type: str) -> str:
    if timestep_type not in DDPM_TIMESTEP_TYPES:
        raise InputError(f"unknown timestep_type {timestep_type!r} in the scheduler config; expected one of "
                         f"{', '.join(DDPM_TIMESTEP_TYPES)}")
    return timestep_type


class DDPMObjective:
    """x_t = sqrt(ᾱ)x0 + sqrt(1-ᾱ)ε (DDPM eq. 4); outputs ε, v or x0, compared in ε-space by default.

    `float64_coefficients`: sqrt(ᾱ_t) and sqrt(1-ᾱ_t) are computed in float64 and rounded once to the data's dtype
    (the training's convention, exact near ᾱ = 1); by default ᾱ_t is rounded to the data's dtype first.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", error_space: str | None = None,
                 float64_coefficients: bool = False, timestep_type: str = "discrete"):
        if prediction_type not in DDPM_PREDICTIONS:
            raise InputError(f"unknown prediction type {prediction_type!r} in the scheduler config; expected one of "
                             f"{', '.join(DDPM_PREDICTIONS)}")
        self.timestep_type = _check_timestep_type(timestep_type)  # 'continuous': the network is given ¼·log σ_t (model_timesteps)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod).to(torch.float64)  # (T,)
        self.prediction_type = prediction_type
        self.error_space = _check_error_space(error_space, "eps")
        self.float64_coefficients = float64_coefficients

    @property
    def T(self) -> int:
        return len(self.alphas_cumprod)

    def to(self, device) -> "DDPMObjective":
        out = DDPMObjective.__new__(DDPMObjective)
        out.__dict__.update(self.__dict__, alphas_cumprod=self.alphas_cumprod.to(device))
        return out

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(ᾱ_t), sqrt(1-ᾱ_t)), each (B, 1, ..., 1) in like's dtype."""
        if self.float64_coefficients:
            a = self.alphas_cumprod[t]
            return _per_sample(a.sqrt(), like), _per_sample((1 - a).sqrt(), like)
        a = _per_sample(self.alphas_cumprod[t], like)
        return a.sqrt(), (1 - a).sqrt()

    def noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, the timestep the model is given): (B,C,H,W), (B,)."""
        _check_noise_inputs(x0, t, eps)
        sqrt_a, sqrt_1ma = self.coefficients(t, x0)
        return sqrt_a * x0 + sqrt_1ma * eps, self.model_timesteps(t)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep the network is given at grid index t: t itself, or ¼·log σ_t where timestep_type is
        'continuous' (EulerDiscreteScheduler's EDM-style c_noise, σ_t = sqrt((1-ᾱ_t)/ᾱ_t))."""
        if self.timestep_type == "discrete":
            return t
        a = self.alphas_cumprod[t]
        return (0.25 * ((1 - a) / a).sqrt().log()).float()

    def compare(self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor,
                t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, target) in the error space; extra output channels (learned variance) are dropped."""
        pred = out[:, : eps.shape[1]]
        if self.prediction_type == "epsilon":
            return pred, eps
        sqrt_a, sqrt_1ma = self.coefficients(t, x0)
        if self.error_space == "native":
            target = sqrt_a * eps - sqrt_1ma * x0 if self.prediction_type == "v_prediction" else x0
            return pred, target
        if self.prediction_type == "v_prediction":
            return sqrt_a * pred + sqrt_1ma * x_t, eps  # ε̂ = sqrt(ᾱ)v̂ + sqrt(1-ᾱ)x_t
        return (x_t - sqrt_a * pred) / sqrt_1ma, eps  # ε̂ from x̂0


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """μ of the resolution-dependent shift: linear in the image token count (Flux)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def static_shift(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = shift·σ / (1 + (shift-1)·σ), the scheduler's static shift of σ (SD3), elementwise."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_noise(x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = (1-σ)x0 + σε (rectified flow) for x0, ε (B,C,H,W) and a noise level σ (B,) per sample."""
    s = _per_sample(sigma, x0)
    return (1 - s) * x0 + s * eps


def flow_sigmas(config: dict, image_seq_len: int | None = None, grid: str = "timesteps") -> torch.Tensor:
    """σ of every training timestep index t = 0..T-1 (ascending, float64), as the scheduler maps them.

    'timesteps': σ = shift((t+1)/T) with the scheduler's static shift, or its dynamic shift at
    μ = calculate_shift(image_seq_len) when `use_dynamic_shifting`, then its terminal stretch.
    'uniform_sigma': σ = (t+1)/T, evenly spaced σ without any shift.
    """
    if grid not in FLOW_GRIDS:
        raise InputError(f"flow timestep grid must be one of {', '.join(FLOW_GRIDS)}, got {grid!r}")
    T = int(config.get("num_train_timesteps", 1000))
    s = torch.arange(1, T + 1, dtype=torch.float64) / T
    if grid == "uniform_sigma":
        return s
    if config.get("use_dynamic_shifting", False):
        if image_seq_len is None:
            raise InputError("this flow model shifts σ by resolution (use_dynamic_shifting); the image size is needed")
        mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        if config.get("time_shift_type", "exponential") == "linear":
            s = mu / (mu + (1 / s - 1))
        else:
            s = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
    else:
        s = static_shift(s, float(config.get("shift", 1.0)))
    if config.get("shift_terminal"):
        one_minus = 1 - s
        s = 1 - one_minus / (one_minus[0] / (1 - config["shift_terminal"]))  # smallest σ lands on shift_terminal
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas"):
        if config.get(key):
            raise InputError(f"flow scheduler option {key}=true is not supported for scoring")
    return s


class FlowObjective:
    """Rectified flow: x_t = (1-σ)x0 + σε, the model predicts v = ε - x0 and is given the timestep σ·T."""

    def __init__(self, sigmas: torch.Tensor, num_train_timesteps: int = 1000, error_space: str | None = None):
        self.sigmas = torch.as_tensor(sigmas).to(torch.float64)  # (T,) σ of each grid index
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = "flow"
        self.error_space = _check_error_space(error_space, FLOW_ERROR_DEFAULT)

    @property
    def T(self) -> int:
        return len(self.sigmas)

    def to(self, device) -> "FlowObjective":
        out = FlowObjective.__new__(FlowObjective)
        out.__dict__.update(self.__dict__, sigmas=self.sigmas.to(device))
        return out

    def noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t = (1-σ)x0 + σε, the timestep σ·T the model is given): (B,C,H,W), (B,)."""
        _check_noise_inputs(x0, t, eps)
        sigma = self.sigmas[t]
        return flow_noise(x0, sigma, eps), (sigma * self.num_train_timesteps).float()

    def compare(self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor,
                t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = out[:, : eps.shape[1]]
        if self.error_space == "native":
            return pred, eps - x0
        return x_t + (1 - _per_sample(self.sigmas[t], x0)) * pred, eps  # ε̂ = x_t + (1-σ)v̂

    def eps_error_weights(self, loss: str) -> torch.Tensor:
        """(T,) factors that turn the velocity-space error of `loss` (l1 or l2) at each grid index into the ε-space
        error of the same output: ε̂ - ε = (1-σ)(v̂ - v), so an l1 error scales by (1-σ) and an l2 error by (1-σ)².
        Scoring in ε-space is therefore velocity scoring with these timestep weights."""
        powers = {"l1": 1, "l2": 2}
        if loss not in powers:
            raise InputError(f"ε-space errors are a timestep weighting of velocity errors for l1 and l2 only, got {loss!r}")
        return (1 - self.sigmas) ** powers[loss]


FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
DDPM_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
                   "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
                   "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                   "UniPCMultistepScheduler", "DEISMultistepScheduler")  # samplers over one β schedule


def is_flow_config(config: dict) -> bool:
    """Whether a scheduler config is a flow-matching one."""
    name = config.get("_class_name", "")
    return name in FLOW_SCHEDULERS or name.startswith("FlowMatch")


def default_error_space(config: dict) -> str:
    """The error space scores use when --error_space is not given: FLOW_ERROR_DEFAULT for flow models, else eps."""
    return FLOW_ERROR_DEFAULT if is_flow_config(config) else "eps"


def ddpm_timestep_type(config: dict) -> str:
    """'continuous' where the scheduler gives the network ¼·log σ instead of t (EulerDiscreteScheduler with
    timestep_type 'continuous' and v-prediction, as diffusers decides it), else 'discrete'."""
    kind = _check_timestep_type(config.get("timestep_type") or "discrete")
    return "continuous" if kind == "continuous" and config.get("prediction_type") == "v_prediction" else "discrete"


def objective_from_config(config: dict, error_space: str | None = None, image_seq_len: int | None = None,
                          grid: str = "timesteps") -> DDPMObjective | FlowObjective:
    """The objective a scheduler config describes; an unknown one is an InputError naming it."""
    name = config.get("_class_name", "")
    if is_flow_config(config):
        return FlowObjective(flow_sigmas(config, image_seq_len, grid), int(config.get("num_train_timesteps", 1000)),
                             error_space)
    if name in DDPM_SCHEDULERS or any(k in config for k in ("beta_schedule", "trained_betas", "beta_start")):
        from .vb import alphas_cumprod_from_config

        try:
            alphas_cumprod = alphas_cumprod_from_config(dict(config))
        except (ValueError, NotImplementedError, KeyError) as e:
            raise InputError(f"scheduler {name or '?'}: {e}") from None
        return DDPMObjective(alphas_cumprod, config.get("prediction_type") or "epsilon", error_space,
                             timestep_type=ddpm_timestep_type(config))
    raise InputError(f"unknown training objective: scheduler {name or '(no _class_name)'} is neither a DDPM-family "
                     f"(β schedule) nor a flow-matching scheduler")


def as_objective(obj) -> DDPMObjective | FlowObjective:
    """An objective, or a ᾱ table (T,) taken as the ε-prediction DDPM objective."""
    if hasattr(obj, "noise") and hasattr(obj, "compare"):
        return obj
    return DDPMObjective(torch.as_tensor(obj))
