"""What every model family shares: reading a pipeline folder or hub id, loading its parts, the latent geometry.

A family module (`families/<name>.py`) reads model_index.json with `pipeline_index`, checks its parts
with `require_components`, loads each with `load_part` (one line naming what is missing and how to
get it), freezes it with `frozen`, wraps the VAE (or pixel space: `"vae": [null, null]`) in `VAE`,
and builds a model class on `ModelGeometry` (or `DDPMModel` when it has an ᾱ table).
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import torch

from .data.sizes import image_hw, image_size, size_name
from .engine import Conditions
from .errors import InputError, MissingError, MissingPackageError
from .objectives import DDPMObjective, ddpm_timestep_type, is_flow_config, objective_from_config
from .records import WEIGHTS_KEY
from .vb import alphas_cumprod_from_config

TINY_MODELS = Path(__file__).parent / "tiny_models"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def check_device(device, flag: str = "--device") -> torch.device:
    """`device` as a torch.device this machine has; InputError for a name torch does not know or a GPU it lacks."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{flag} must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise InputError(f"{flag} {str(device)!r} needs a CUDA GPU, and torch finds none: use cpu")
        if device.index is not None and device.index >= count:
            raise InputError(f"{flag} {str(device)!r}: torch finds {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{flag} 'mps' needs Apple's Metal backend, and torch finds none: use cpu")
    return device


def default_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The --dtype flag's dtype, or by default float16 on a GPU and float32 elsewhere (slow or unsupported there)."""
    return DTYPES[name] if name else (torch.float16 if device.type == "cuda" else torch.float32)


def is_local(model: str) -> bool:
    """Whether `model` names a folder rather than a hub id (owner/name)."""
    return os.path.isabs(model) or model.startswith((".", "~")) or os.path.exists(model) or model.count("/") != 1


SAMPLE_BYTES = 1 << 16  # per sampled window of a weights file
# files beside a model that do not change its errors: cards, and what the toolkit ships with its own models
FINGERPRINT_SKIPS = ("calibration.json", "timestep_weights.json", "training.json", "heldout_train.json")


def _sampled_digest(h, path: Path) -> None:
    """Feed a file into hash `h`: whole when small, else its size and four windows (start, thirds, end), so that a
    multi-GB checkpoint is told apart from a retrained one of the same shape without reading it all."""
    try:
        size = path.stat().st_size
        h.update(f"{size}\0".encode())
        with open(path, "rb") as f:
            if size <= 4 * SAMPLE_BYTES:
                h.update(f.read())
                return
            for offset in (0, size // 3, 2 * size // 3, size - SAMPLE_BYTES):
                f.seek(offset)
                h.update(f.read(SAMPLE_BYTES))
    except OSError:  # a file the loader does not need (a lock, a broken link) must not stop the run
        h.update(b"unreadable\0")


def weights_fingerprint(model: str | os.PathLike | None) -> str | None:
    """A short digest that changes when the weights (or configs, tokenizers, scheduler) behind `model` change: of a
    local folder, its model_index.json and every file of its component folders (weights files sampled); of a local
    file, the file; of a hub id, the cached snapshot's commit. None when there is nothing to read (a hub id not in
    the cache, an open_clip tag). A run folder records it, so records are never resumed with other weights. The
    top-level extras of a folder (model card, calibration, timestep weights) do not change the errors and are left
    out."""
    import hashlib

    if model is None:
        return None
    local = Path(model).expanduser()
    h = hashlib.sha1()
    if local.is_file():
        _sampled_digest(h, local)
        return h.hexdigest()[:12]
    if local.is_dir():
        top = [local / "model_index.json"] if (local / "model_index.json").is_file() else []
        if not top:  # a single-model folder (transformers, diffusers component): its files count
            top = [f for f in sorted(local.iterdir()) if f.is_file() and f.name not in FINGERPRINT_SKIPS]
        parts = [f for d in sorted(local.iterdir()) if d.is_dir() and not d.name.startswith(".")
                 for f in sorted(d.rglob("*")) if f.is_file()]
        for f in [*top, *parts]:
            if any(p.startswith(".") for p in f.relative_to(local).parts) or f.suffix.lower() == ".md":
                continue
            h.update(f"{f.relative_to(local).as_posix()}\0".encode())
            _sampled_digest(h, f)
        return h.hexdigest()[:12]
    if is_local(str(model)):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("model_index.json", "config.json"):
            cached = try_to_load_from_cache(str(model), name)
            if isinstance(cached, str):  # .../snapshots/<commit>/<name>
                return "hub:" + Path(cached).parent.name[:12]
    except Exception:  # noqa: BLE001 - a cache that cannot be read only loses the check
        pass
    return None


def model_numerics(source, **others) -> dict:
    """A run's numerics (records.check_manifest): `others` (dtype, attention, noise digest) and the fingerprint of
    the model's weights, when it has one (weights_fingerprint)."""
    fingerprint = weights_fingerprint(source)
    return {**others, **({WEIGHTS_KEY: fingerprint} if fingerprint else {})}


def not_found(model: str, what: str, err: Exception, part: str | None = None,
              expected: str | None = None) -> MissingError | InputError:
    """The error for a folder that lacks a part (MissingError) or holds a damaged one (InputError), or for a hub id
    that is neither cached nor reachable (MissingError)."""
    if is_local(model):
        found = f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        its = f"its {part}" if part else "its parts"
        if isinstance(err, OSError) and ("file named" in str(err) or not Path(model).expanduser().exists()):
            return MissingError(f"{what} folder {model!r} does not exist or lacks {its} ({found}); expected "
                                f"{expected or 'a diffusers pipeline folder'}")
        return InputError(f"{what} folder {model!r}: {its} cannot be loaded ({found}); its files are damaged, cut "
                          f"short or do not match its config: restore the folder from the model's source (re-download it)")
    from huggingface_hub import constants

    return MissingError(
        f"cannot load {what} {model!r}: it is not a local folder and not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}), and the hub is unreachable; download it on a machine with network (`hf download "
        f"{model}`, or `huggingface-cli download {model}` with an older huggingface_hub) and give its local folder "
        f"instead of the id, or set HF_HOME to the Hugging Face folder whose cache holds it"
    )


def load_errors() -> tuple[type[Exception], ...]:
    """What from_pretrained raises for a missing, damaged or mismatched file (safetensors and pickles included)."""
    import pickle

    from safetensors import SafetensorError

    return OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError


def load_part(cls, model: str, what: str, **kwargs):
    """cls.from_pretrained(model, **kwargs), or a MissingError (InputError for a damaged part) saying what is wrong and
    how to fix it."""
    part = kwargs.get("subfolder")
    folder = Path(model).expanduser() / (part or "")
    if part and Path(model).expanduser().is_dir() and not (folder.is_dir() and any(folder.iterdir())):
        # transformers builds an empty tokenizer from a folder without its files: refuse before it does
        raise MissingError(f"{what} folder {model!r} lacks its {part}: {folder} is missing or empty, though "
                           f"model_index.json lists it; expected a diffusers pipeline folder with every part it lists")
    try:
        return cls.from_pretrained(model, **kwargs)
    except load_errors() as e:  # hub/cache misses and missing files surface as OSError, damaged files vary
        raise not_found(model, what, e, part) from None


def read_json(path: Path, what: str):
    """A JSON file of a model folder; InputError naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        where = f"line {e.lineno} column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise InputError(f"{what} file {path} is not valid JSON ({where}); it is damaged or was cut short: "
                         f"restore it from the model's source (re-download the folder)") from None


def pipeline_index(model: str, what: str) -> dict:
    """model_index.json of a pipeline folder or hub id (from the cache when offline)."""
    local = Path(model).expanduser()
    if local.is_file():
        raise InputError(f"{what} {model!r} is a file (a single-file checkpoint?); expected a diffusers pipeline folder "
                         f"(model_index.json and a folder per part): convert a checkpoint with diffusers' "
                         f"from_single_file(...).save_pretrained(FOLDER)")
    if local.is_dir():
        path = local / "model_index.json"
        if not path.is_file():
            raise MissingError(f"{what} folder {model!r} has no model_index.json; expected a diffusers pipeline folder")
        index = read_json(path, what)
        # every component's config and tokenizer files too: from_pretrained would report a bad one as a missing part
        for name in sorted(k for k in index if not k.startswith("_") and (local / k).is_dir()):
            for config in sorted((local / name).glob("*.json")):
                read_json(config, what)
        return index
    if is_local(model):
        raise MissingError(f"{what} folder {model!r} does not exist; expected a diffusers pipeline folder")
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(model))
    except Exception as e:  # noqa: BLE001 - every hub failure becomes one message
        raise not_found(model, what, e) from None


def has_component(index: dict, name: str) -> bool:
    """Whether model_index.json lists part `name` as a (library, class) pair, not as null."""
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


def frozen(module: torch.nn.Module, device) -> torch.nn.Module:
    """The module on `device`, in eval mode, without gradients."""
    return module.to(device).eval().requires_grad_(False)


def require_components(index: dict, model: str, what: str, parts) -> None:
    """MissingError naming the first of `parts` that model_index.json lacks (or lists as null)."""
    for part in parts:
        if not has_component(index, part):
            raise MissingError(f"{what} {model!r} has no {part} in its model_index.json; expected a "
                               f"{index.get('_class_name') or what} folder with {', '.join(parts)}")


def scheduler_config(model: str, what: str) -> dict:
    """The scheduler config of a pipeline folder or hub id (it names the training objective)."""
    from diffusers import DDPMScheduler

    try:
        return dict(DDPMScheduler.load_config(model, subfolder="scheduler"))
    except Exception as e:  # noqa: BLE001
        raise not_found(model, what, e, "scheduler") from None


_truncations: list | None = None  # (count, tokenizer, limit, first prompt) inside one_truncation_warning()


@contextlib.contextmanager
def quiet_loading(verbose: bool = False):
    """Silence the progress bars and log messages of diffusers, transformers and huggingface_hub while loading.

    What each library showed before is restored afterwards; `verbose` keeps them.
    """
    if verbose:
        yield
        return
    import diffusers
    import huggingface_hub
    import transformers

    libs = [transformers.utils.logging, diffusers.utils.logging]
    hub_level = huggingface_hub.utils.logging.get_verbosity()
    huggingface_hub.utils.logging.set_verbosity_error()  # its retries of an unreachable hub log a line each
    levels = [lib.get_verbosity() for lib in libs]
    bars = [lib.is_progress_bar_enabled() for lib in libs]
    hub_bars = not huggingface_hub.utils.are_progress_bars_disabled()
    for lib in libs:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(diffusers|transformers|huggingface_hub)(\.|$)")
            yield
    finally:
        for lib, level, bar in zip(libs, levels, bars):
            lib.set_verbosity(level)
            if bar:
                lib.enable_progress_bar()
        if hub_bars:
            huggingface_hub.utils.enable_progress_bars()
        huggingface_hub.utils.logging.set_verbosity(hub_level)


@contextlib.contextmanager
def one_truncation_warning():
    """Within this block, prompt truncations by every tokenizer are reported in one warning at the end."""
    global _truncations
    outer, _truncations = _truncations, []
    try:
        yield
    finally:
        found, _truncations = _truncations, outer
        if found:
            limits = ", ".join(dict.fromkeys(f"{what} {limit}" for _, what, limit, _ in found))
            warnings.warn(f"{max(n for n, *_ in found)} prompt(s) exceed the token limit ({limits}) and were truncated "
                          f"as the pipeline does (first: {found[0][3]!r})", stacklevel=3)


def tokenize(tokenizer, prompts: list[str], max_length: int, what: str = "text encoder") -> torch.Tensor:
    """Token ids (K, max_length), padded and truncated as the pipelines do; a truncation is reported in one warning."""
    ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids
    probe = tokenizer(prompts, truncation=True, max_length=max_length + 1).input_ids  # one token past the limit
    long = [p for p, row in zip(prompts, probe) if len(row) > max_length]
    if long and _truncations is not None:
        _truncations.append((len(long), what, max_length, long[0][:80]))
    elif long:
        warnings.warn(f"{len(long)} prompt(s) exceed the {what}'s limit of {max_length} tokens and were truncated "
                      f"as the pipeline does (first: {long[0][:80]!r})", stacklevel=2)
    return ids


def pooled_conditions(encode, prompts: list[str], batch_size: int, dtype: torch.dtype) -> Conditions:
    """Prompt and pooled embeddings in `dtype`, `batch_size` prompts at a time: encode(prompts) -> (hidden, pooled)."""
    parts = []
    for i in range(0, len(prompts), batch_size):
        h, pooled = encode(prompts[i : i + batch_size])
        parts.append(Conditions(prompt_embeds=h.to(dtype), pooled=pooled.to(dtype)))
    return Conditions.cat(parts)


def set_attention(module: torch.nn.Module, attention: str) -> None:
    """'sdpa': the diffusers default processors (PyTorch scaled-dot-product attention); 'xformers': memory-efficient kernels."""
    if attention == "sdpa":
        return  # every diffusers default processor already calls scaled_dot_product_attention
    if attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise MissingPackageError("attention 'xformers' needs the xformers package: pip install xformers") from None
        module.enable_xformers_memory_efficient_attention()
    else:
        raise InputError(f"attention must be 'sdpa' or 'xformers', got {attention!r}")


def load_vae(model: str, what: str, index: dict, dtype: torch.dtype, device, subfolder: str | None = "vae"):
    """The pipeline's AutoencoderKL, or None in pixel space; kept in float32 where its config asks (force_upcast)."""
    if subfolder is not None and not has_component(index, subfolder):
        return None
    from diffusers import AutoencoderKL  # imports every autoencoder family: only when there is one to load

    local = Path(model).expanduser()
    if subfolder is None and not (local / "config.json").is_file() and (local / "vae" / "config.json").is_file():
        subfolder = "vae"  # a pipeline folder given for its VAE
    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        config = AutoencoderKL.load_config(model, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise not_found(model, what, e, subfolder or "config.json", "a diffusers VAE folder (config.json and weights) "
                        "or a pipeline folder with a vae" if subfolder is None else None) from None
    if dtype == torch.float16 and config.get("force_upcast", False):
        dtype = torch.float32  # the SDXL VAE overflows in float16
    return frozen(load_part(AutoencoderKL, model, what, torch_dtype=dtype, **kwargs), device)


class VAE:
    """Image (N,3,H,W) in [-1,1] -> latent: (posterior mean - shift) × scale from the VAE config, or the pixels."""

    def __init__(self, vae, pixel_channels: int = 3):
        self.vae = vae
        if vae is None:
            self.downsample, self.channels, self.scaling_factor, self.shift_factor = 1, pixel_channels, 1.0, 0.0
        else:
            self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
            self.channels = vae.config.latent_channels
            self.scaling_factor = vae.config.scaling_factor
            self.shift_factor = getattr(vae.config, "shift_factor", None) or 0.0

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        if self.vae is None:
            return pixels.float()
        p = next(self.vae.parameters())
        out = [self.vae.encode(pixels[i : i + batch_size].to(p.device, p.dtype)).latent_dist.mean
               for i in range(0, len(pixels), batch_size)]
        return (torch.cat(out).float() - self.shift_factor) * self.scaling_factor  # (N, C, H/f, W/f)

    def check_size(self, img_size: int | tuple[int, int], multiple: int = 1) -> None:
        """Raise InputError unless both sides of the size (S or (H, W)) are multiples of downsample × multiple."""
        if any(side % (self.downsample * multiple) for side in image_hw(img_size)):
            raise InputError(f"image size must be divisible by {self.downsample * multiple} for this model, "
                             f"got {size_name(img_size)}")


def ddpm_alphas_cumprod(config: dict) -> torch.Tensor | None:
    """A DDPM-family scheduler config's ᾱ table (T,) float64; None for a flow-matching one (DDPMModel)."""
    return None if is_flow_config(config) else alphas_cumprod_from_config(config)


def latent_space(vae, channels: int, model: str, what: str, backbone: str = "denoiser",
                 vae_source: str | None = None) -> VAE:
    """VAE(vae, channels), or an InputError where the backbone does not take the VAE's latents (or, without a VAE,
    RGB pixels): parts of different models in one folder, an inpainting UNet, a VAE (`vae_source`) given for another
    model."""
    found = 3 if vae is None else vae.config.latent_channels
    if vae is not None and channels == 2 * found + 1:  # latents + mask + masked-image latents
        raise InputError(f"{what} {model!r}: its {backbone} takes {channels}-channel inputs ({found} latent channels, a "
                         f"mask and {found} masked-image channels): an inpainting model, which scores no text-to-image "
                         f"likelihood; expected a text-to-image model, whose {backbone} takes the VAE's {found}-channel "
                         f"latents")
    if found != channels:
        given = "RGB pixels (3 channels: it has no VAE)" if vae is None else \
            f"{found}-channel latents from {'its VAE' if vae_source is None else f'the VAE {vae_source!r}'}"
        raise InputError(f"{what} {model!r}: its {backbone} takes {channels}-channel inputs but would get {given}; "
                         f"expected a VAE (or pixels) matching the {backbone}'s in_channels")
    return VAE(vae, channels)


class ModelGeometry:
    """What every model family shares: the objective, the native size and the image -> latent mapping.

    A family provides `backbone_name` (the attribute holding its denoising network), `encode_prompts`
    (or class labels) and `denoiser(x_t, t, cond)`; everything else here follows from the configs.
    """

    autoencoder: VAE
    scheduler_config: dict
    backbone_name = "unet"
    token_patch = 1  # latent pixels per token side (the scheduler's image sequence length)
    size_multiple = 1  # latent side must be a multiple of this

    @property
    def backbone(self) -> torch.nn.Module:
        return getattr(self, self.backbone_name)

    @property
    def native_size(self) -> int | tuple[int, int]:
        """The backbone's `sample_size` in pixels: S for a square, (H, W) where the config gives [H, W]."""
        h, w = image_hw(self.backbone.config.sample_size)
        return image_size((h * self.autoencoder.downsample, w * self.autoencoder.downsample))

    @property
    def T(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def objective(self):
        """The model's training objective with its default error space and timestep grid."""
        return self.make_objective()

    def make_objective(self, latent_shape: tuple[int, ...] | None = None, error_space: str | None = None,
                       grid: str = "timesteps"):
        """The objective of the scheduler config; `latent_shape` sets σ's resolution-dependent shift where used."""
        seq_len = None
        if latent_shape is not None:
            seq_len = (latent_shape[-2] // self.token_patch) * (latent_shape[-1] // self.token_patch)
        return objective_from_config(self.scheduler_config, error_space, seq_len, grid)

    def latent_shape(self, img_size: int | tuple[int, int]) -> tuple[int, int, int]:
        """(C, H/f, W/f) of images of size S or (H, W)."""
        self.autoencoder.check_size(img_size, self.size_multiple)
        h, w = image_hw(img_size)
        return (self.autoencoder.channels, h // self.autoencoder.downsample, w // self.autoencoder.downsample)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(pixels)


class DDPMModel(ModelGeometry):
    """A UNet-family model (SD, SDXL, DiT): a DDPM-family scheduler's ᾱ table, from which T and the objective follow
    with the prediction type; or None where the folder's scheduler is a flow-matching one (a rectified-flow UNet),
    whose objective the scheduler config gives as for SD3 and Flux."""

    alphas_cumprod: torch.Tensor | None

    def __post_init__(self):
        if self.scheduler_config is None:  # built by hand from a ᾱ table: ε-prediction
            self.scheduler_config = {"prediction_type": "epsilon"}

    @property
    def T(self) -> int:
        return super().T if self.alphas_cumprod is None else len(self.alphas_cumprod)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type") or "epsilon"

    def make_objective(self, latent_shape=None, error_space: str | None = None, grid: str = "timesteps"):
        if self.alphas_cumprod is None:
            return super().make_objective(latent_shape, error_space, grid)
        return DDPMObjective(self.alphas_cumprod, self.prediction_type, error_space,
                             timestep_type=ddpm_timestep_type(self.scheduler_config))

