"""Python API: load a model once, classify images against prompts, get errors and probabilities."""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .schedules.staged import AdaptiveResult, validate_schedule
from .calibration import UNCALIBRATED_TEMPERATURE, fitted_temperature, load_calibration, resolve_offsets
from .engine import LOSSES, Scorer
from .errors import InputError
from .families import load_any_model, resolve_model
from .loading import DTYPES, check_device, quiet_loading
from .noise import check_bank, make_noise
from .objectives import default_error_space
from .schedules.statistical import make_schedule
from .weighting import NO_WEIGHTS, load_weights, resolve_weights


@dataclass
class Prediction:
    """One image's outcome: the winning prompt, each prompt's mean and paired errors and its probabilities."""

    pred: int  # index into the prompts
    mean_errors: torch.Tensor  # (K,) mean error over the (t, ε) each prompt was evaluated on
    probs: torch.Tensor  # (K,) softmax(-scores / temperature)
    errors: dict  # prompt index -> {'t': (n,), 'pred_errors': (n,)}
    scores: torch.Tensor  # (K,) paired mean errors: over the winner's samples (schedules.staged.paired_scores)
    temperature: float  # the temperature of probs
    calibrated: bool  # whether it is the model's shipped temperature for this loss (calibration.json)
    timestep_weights: str | None = None  # digest of the timestep weights of the ranking and the scores (None: plain means)
    shift: torch.Tensor | None = None  # (K,) class offsets' shift added to the scores in the ranking and in probs


def probabilities(mean_errors: torch.Tensor, temperature: float) -> torch.Tensor:
    """p(c|x) ∝ exp(-E[err]/τ): Bayes' rule with a uniform prior; τ rescales the Monte Carlo ELBO."""
    if not temperature > 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    return torch.softmax(-mean_errors.double() / temperature, dim=-1).float()


def preprocess(images, size: int | tuple[int, int], interpolation: str = "bicubic", adm_crop: bool = False) -> torch.Tensor:
    """PIL image(s) -> (N, 3, S, S) (or (N, 3, H, W) for size (H, W)) in [-1, 1] (data.datasets.sd_transform, or
    DiT's dit_transform with `adm_crop`); tensors are taken as already preprocessed."""
    from .data.transforms import dit_transform, sd_transform

    if isinstance(images, torch.Tensor):
        images = images.unsqueeze(0) if images.dim() == 3 else images
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"expected image tensors of shape (N, 3, H, W) in [-1, 1], found {tuple(images.shape)}")
        if not images.is_floating_point() or not bool(torch.isfinite(images).all()) or \
                (images.numel() and float(images.abs().max()) > 1 + TENSOR_SLACK):
            found = (f"dtype {images.dtype}" if not images.is_floating_point() else "NaN or infinite values"
                     if not bool(torch.isfinite(images).all()) else
                     f"values in [{float(images.min()):g}, {float(images.max()):g}]")
            raise InputError(f"expected image tensors (N, 3, H, W) of floats in [-1, 1], found {found}: scale [0, 1] "
                             f"images by 2x - 1, or pass PIL images, which are converted for you")
        return images
    images = [images] if isinstance(images, Image.Image) else _image_list(images)
    foreign = [type(im).__name__ for im in images if not isinstance(im, Image.Image)]
    if foreign:
        raise InputError(f"expected PIL images or a (N, 3, H, W) tensor in [-1, 1], found {foreign[0]} among the images")
    empty = [im.size for im in images if min(im.size) < 1]
    if empty:
        raise InputError(f"expected images of at least 1 x 1 pixels, found one of {empty[0][0]} x {empty[0][1]}")
    if adm_crop and not isinstance(size, int):
        raise InputError(f"a DiT takes square images: give img_size S, got {size}")
    tf = dit_transform(size) if adm_crop else sd_transform(size, interpolation)
    return torch.stack([tf(im) for im in images])  # both transforms convert any image mode to 8-bit RGB


TENSOR_SLACK = 1e-3  # image tensors may overshoot [-1, 1] by rounding (a bicubic resize, a float16 cast)
STATISTICAL_KEYWORDS = ("z", "min_samples", "delta", "variance", "spending", "epsilon")


def _int_list(value, name: str) -> list[int]:
    """A schedule's counts given as one integer or a sequence of them (Python, numpy or torch integers)."""
    items = list(value) if isinstance(value, (list, tuple, range, torch.Tensor)) or type(value).__name__ == "ndarray" \
        else [value]
    try:
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        return [operator.index(v) for v in items]
    except TypeError:
        raise InputError(f"{name} must be an integer or a list of integers, found {value!r}") from None


def _refuse_repeats(keys: list, given: list) -> None:
    """InputError when two candidates are one: a copy is scored the same on every sample, so the schedule can never
    tell it from its twin and the class's probability is split between them."""
    first: dict = {}
    for j, key in enumerate(keys):
        i = first.setdefault(key, j)
        if i != j:
            same = "" if given[i] == given[j] else f" (both class {key})"
            raise InputError(f"candidates {i} ({given[i]!r}) and {j} ({given[j]!r}) are the same{same}: expected "
                             f"distinct prompts or classes, since a repeated one splits its probability with its copy")


def _image_list(images) -> list:
    """A sequence or iterable of images as a list; InputError for None, a path or another single object."""
    if isinstance(images, (str, bytes, Path)) or not hasattr(images, "__iter__"):
        raise InputError(f"expected PIL images or a (N, 3, H, W) tensor in [-1, 1], found {type(images).__name__}"
                         + (": open image files with PIL.Image.open" if isinstance(images, (str, bytes, Path)) else ""))
    return list(images)


def n_images(images) -> int:
    """How many images `images` holds (a PIL image, a sequence of them, or a (3, H, W) / (N, 3, H, W) tensor)."""
    if isinstance(images, Image.Image) or (isinstance(images, torch.Tensor) and images.dim() == 3):
        return 1
    return len(images)


class DiffusionClassifier:
    """Zero-shot classification with a text-conditional diffusion model (Li et al., ICCV 2023), or classification with
    a class-conditional one (DiT), whose candidates are class labels or their names instead of prompts."""

    def __init__(self, model, batch_size: int = 32, error_space: str | None = None, flow_grid: str = "timesteps",
                 calibration: dict | None = None, timestep_weights: str | Path | None = None,
                 source: str | Path | None = None):
        """`calibration`: {loss: {'temperature': τ, ...}}, the model's fitted temperatures (calibration.load_calibration);
        from_pretrained reads the calibration.json of a local model folder. `timestep_weights`: a weights file, 'none'
        (plain means) or None: the weights shipped in the local model folder `source` for the loss classified with
        (weighting.resolve_weights)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.calibration = dict(calibration or {})
        self.timestep_weights = timestep_weights
        self.source = source
        self._weights: dict[str, tuple] = {}  # loss -> (TimestepWeights or None, digest): read once per loss
        self.batch_size = batch_size
        self.error_space = error_space
        self.flow_grid = flow_grid
        self._prompt_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, model: str = "tiny", device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32, batch_size: int = 32,
                        attention: str = "sdpa", error_space: str | None = None, flow_grid: str = "timesteps",
                        no_t5: bool = False, guidance: float | None = None, verbose: bool = False,
                        timestep_weights: str | Path | None = None) -> "DiffusionClassifier":
        """Load a version id ('2-0', 'xl-1-0', '3-5-medium', 'flux-dev', 'tiny', ...), hub id or local folder of any family.

        The model folder's calibration.json and timestep_weights.json apply by default (`timestep_weights`: a weights
        file, or 'none' for plain means). The libraries' loading bars and messages are silenced unless `verbose`."""
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise InputError(f"dtype must be one of {', '.join(DTYPES)} (or a torch.dtype), got {dtype!r}")
            dtype = DTYPES[dtype]
        if dtype not in DTYPES.values():
            raise InputError(f"dtype must be one of {', '.join(DTYPES)} (or that torch.dtype), got {dtype!r}")
        device = check_device(device, "device")
        source = resolve_model(model=model)
        with quiet_loading(verbose):
            model = load_any_model(source, device, dtype, attention, no_t5=no_t5, guidance=guidance)
        if timestep_weights is not None and str(timestep_weights) != NO_WEIGHTS:
            load_weights(timestep_weights, model.T)  # a bad file fails now, not at the first classify
        return cls(model, batch_size, error_space, flow_grid, load_calibration(source), timestep_weights, source)

    @property
    def class_conditional(self) -> bool:
        """Whether the model is conditioned on class labels (DiT): its candidates are labels or label names."""
        return getattr(self.model, "family", None) == "dit"

    def embed(self, prompts: Sequence) -> torch.Tensor:
        """The conditions of the candidates: the prompts' text embeddings, or a DiT's class labels."""
        if self.class_conditional:
            return torch.tensor([self._label(c) for c in prompts])
        key = tuple(prompts)
        if key not in self._prompt_cache:  # text embeddings are computed once per prompt list
            self._prompt_cache = {key: self.model.encode_prompts(list(prompts))}
        return self._prompt_cache[key]

    def _label(self, candidate) -> int:
        """A class-conditional model's label of a candidate: a label 0..num_classes-1 or a name in its id2label."""
        n = self.model.num_classes
        if isinstance(candidate, str):
            key = candidate.strip().lower()
            names = {name.lower(): k for k, name in self.model.id2label.items()}
            if key in names:
                return names[key]
            if not (key.isascii() and key.isdigit()):  # int() refuses '²' though str.isdigit() takes it
                shown = ", ".join(list(self.model.id2label.values())[:5]) or "none: the model has no id2label"
                raise InputError(f"{candidate!r} is not a class of this model: expected a label 0..{n - 1} or a "
                                 f"name of its id2label ({shown})")
            candidate = int(key)
        try:
            label = None if isinstance(candidate, bool) else operator.index(candidate)
        except TypeError:
            label = None
        if label is None:
            raise InputError(f"expected class labels or names for a class-conditional model, found {candidate!r}")
        if not 0 <= label < n:
            raise InputError(f"class label {label} is outside this model's classes 0..{n - 1}")
        return label

    def classify(
        self,
        images,
        prompts: Sequence[str],
        to_keep: Sequence[int] = (1,),
        n_samples: Sequence[int] = (50,),
        n_trials: int = 1,
        loss: str = "l2",
        noise: torch.Tensor | None = None,
        seed: int = 0,
        img_size: int | tuple[int, int] | None = None,
        interpolation: str = "bicubic",
        temperature: float | None = None,
        schedule: str = "reference",
        class_offsets: str | None = None,
        **statistical,
    ) -> list[Prediction]:
        """Classify PIL images or (N,3,H,W) tensors in [-1,1] against `prompts` with the staged schedule, or with
        schedule="statistical" and its settings as keywords (z, min_samples, delta, variance, spending, epsilon:
        statistical.statistical_classify; it scores at most max(n_samples) timesteps per prompt). `img_size`: S
        (resize, centre crop) or (H, W) (resize, no crop); not given: the model's native size.

        Probabilities are softmax(-score / temperature) over each prompt's paired score (its mean error estimated on
        the winner's samples, so prompts dropped early are not scored on fewer, easier timesteps). `temperature`
        not given: the model's shipped temperature for `loss` (fitted on held-out images, Prediction.calibrated),
        else calibration.UNCALIBRATED_TEMPERATURE.

        Class offsets (class_offsets.ClassOffsets) shipped with the model for `loss` and exactly these prompts (in the
        order and with the classes they were fitted with: the i-th prompt is class i) apply unless `class_offsets` is
        'none': the schedule ranks scores + Prediction.shift, probabilities are softmax(-(score + shift) / τ), and τ
        not given is the one fitted with the offsets."""
        if temperature is not None and not (temperature > 0 and math.isfinite(temperature)):
            raise InputError(f"temperature must be a finite positive number, got {temperature}")
        prompts = prompts if isinstance(prompts, str) else list(prompts)
        images = images if isinstance(images, (torch.Tensor, Image.Image)) else _image_list(images)
        to_keep, n_samples = _int_list(to_keep, "to_keep"), _int_list(n_samples, "n_samples")
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise InputError(f"n_trials must be a positive integer, got {n_trials!r}")
        if loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        unknown = sorted(set(statistical) - set(STATISTICAL_KEYWORDS))
        if unknown:
            raise InputError(f"unknown keyword argument(s) {', '.join(unknown)}; the statistical schedule takes "
                             f"{', '.join(STATISTICAL_KEYWORDS)}")
        if noise is not None:
            noise = check_bank(noise, "noise")
        if isinstance(prompts, str) or not len(prompts) or \
                not (self.class_conditional or all(isinstance(p, str) for p in prompts)):
            kind = "class labels or names" if self.class_conditional else "prompt strings"
            raise InputError(f"expected a non-empty list of {kind}, found {prompts!r:.80}")
        if n_images(images) == 0:
            return []  # nothing to classify
        if schedule == "reference":
            validate_schedule(to_keep, n_samples, len(prompts), self.model.T)
        if loss not in self._weights:
            self._weights[loss] = resolve_weights(self.timestep_weights, self.source, self.model.T, loss)
        tw, digest = self._weights[loss]
        weights = None if tw is None else tw.weights
        space = self.error_space or default_error_space(getattr(self.model, "scheduler_config", {}))
        candidates = [self._label(c) for c in prompts] if self.class_conditional else \
            [[p, i] for i, p in enumerate(prompts)]
        _refuse_repeats([c if self.class_conditional else c[0] for c in candidates], prompts)
        offsets = resolve_offsets(class_offsets, self.source, loss, space, digest, candidates, self.calibration)
        shift = None if offsets is None else offsets.shift(range(len(prompts)))
        classify, n_rows = make_schedule(schedule, to_keep, n_samples, n_trials, T=self.model.T, loss=loss,
                                         weights=weights, shift=shift, **statistical)
        evaluate = self.evaluator(images, prompts, n_rows, loss, noise, seed, img_size, interpolation)
        results = classify(evaluate, n_images(images), len(prompts))
        shipped = offsets.temperature if offsets is not None else fitted_temperature(self.calibration, loss, space, digest)
        calibrated = temperature is None and shipped is not None
        tau = temperature if temperature is not None else float(shipped) if calibrated else UNCALIBRATED_TEMPERATURE
        return [self._prediction(r, len(prompts), tau, calibrated, weights, digest, shift) for r in results]

    def evaluator(self, images, prompts: Sequence[str], n_rows: int, loss: str = "l2", noise: torch.Tensor | None = None,
                  seed: int = 0, img_size: int | tuple[int, int] | None = None, interpolation: str = "bicubic"):
        """evaluate(jobs) -> the denoising error of each (image, prompt, t, noise row) job (engine.Jobs): what a
        schedule calls, over these images and prompts and a noise bank of n_rows draws (seeded, unless given)."""
        m = self.model
        size = m.native_size if img_size is None else img_size
        pixels = preprocess(images, size, interpolation, self.class_conditional)
        m.latent_shape(tuple(pixels.shape[-2:]))  # InputError for a size the model does not take (VAE factor, DiT's)
        latents = m.encode_images(pixels)
        if noise is None:
            noise = make_noise(n_rows, tuple(latents.shape[1:]), seed)
        objective = m.make_objective(tuple(latents.shape[1:]), self.error_space, self.flow_grid)
        scorer = Scorer(m.denoiser, objective, noise, m.device, m.dtype, self.batch_size)
        embeds = self.embed(prompts)
        return lambda jobs: scorer.evaluate(latents, embeds, jobs, loss)

    @staticmethod
    def _prediction(r: AdaptiveResult, k: int, temperature: float, calibrated: bool, weights: torch.Tensor | None,
                    digest: str | None, shift: torch.Tensor | None = None) -> Prediction:
        scores = r.scores(k, weights)
        ranked = scores if shift is None else scores + shift
        return Prediction(r.pred, r.mean_errors(k), probabilities(ranked, temperature), r.errors, scores, temperature,
                          calibrated, digest, shift)
