"""Winoground with a diffusion model (each (caption, image) pair scored by its denoising error) or with CLIP."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable

import torch

from diffusion_classifier.baselines import CLIP_VERSIONS, OPENCLIP_VERSION, load_baseline
from diffusion_classifier.cli import RESIZE_HELP, add_img_size_arg, folder_suffix, positive_int, seed_int
from diffusion_classifier.cli import run as run_cli
from diffusion_classifier.data.images import UnreadableImageError, found_before_message
from diffusion_classifier.data.transforms import INTERPOLATIONS, sd_transform
from diffusion_classifier.data.winoground import find_unreadable_examples, how_to_obtain, load_winoground
from diffusion_classifier.engine import Scorer
from diffusion_classifier.errors import InputError, MissingError
from diffusion_classifier.families import SD_VERSIONS, load_model, resolve_sd_model
from diffusion_classifier.loading import DTYPES, default_dtype, model_numerics
from diffusion_classifier.noise import load_noise, noise_bank, noise_digest, periodic_noise_needed
from diffusion_classifier.packing import resolve_packing
from diffusion_classifier.records import check_manifest, check_writable, environment_info, write_json
from diffusion_classifier.runs import RunDescription, winoground_run
from diffusion_classifier.schedules.staged import interval_timesteps
from diffusion_classifier.tasks.winoground import (
    diffusion_example_scores,
    ordered_records,
    run_examples,
    summarize,
    summary_line,
    summary_lines,
)

DEFAULT_VERSION = {"sd": "2-0", "clip": "ViT-L/14", "openclip": OPENCLIP_VERSION}
RESULT_FILE = "results.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # the reference's flags
    p.add_argument("--model", default="sd", choices=["sd", "clip", "openclip"], help="scorer: a diffusion model or CLIP")
    p.add_argument("--version", default=None,
                   help=f"model version; not given: per --model, {DEFAULT_VERSION}. sd: {', '.join(SD_VERSIONS)} ('tiny': the "
                        f"shipped digits model); clip: {', '.join(CLIP_VERSIONS)}; openclip: an open_clip architecture")
    p.add_argument("--t_interval", type=positive_int, default=5,
                   help="sd: score on timesteps range(t_interval//2, T, t_interval), at most T")
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="sd: denoiser evaluations per batch (the reference's default: 32); without --randomize_noise also "
                        "the number of noise rows reused, so 32 when not given; with it, chosen for the device (the reference's 32 for 512 px Stable Diffusion latents, up to 256 for small ones)")
    p.add_argument("--n_trials", type=positive_int, default=1, help="sd: noise draws per timestep")
    p.add_argument("--noise_path", type=Path, default=None, help="sd: saved noise bank (N, C, H, W); not given: drawn from --seed")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="model precision; not given: float16 on GPU, float32 on CPU")
    p.add_argument("--randomize_noise", action="store_true",
                   help="sd: the k-th (t, trial) uses noise row k; otherwise row k %% batch_size (the reference's reuse)")
    p.add_argument("--interpolation", default="bilinear", choices=list(INTERPOLATIONS), help="sd: resize filter")
    p.add_argument("--extra", type=folder_suffix, default=None, help="suffix of the log folder: winoground_<extra>")
    p.add_argument("--seed", type=seed_int, default=0, help="sd: seed of the noise bank when --noise_path is not given")
    # beyond the reference
    p.add_argument("--data_dir", type=Path, default=os.environ.get("WINOGROUND_DIR"),
                   help="local Winoground copy: examples.jsonl plus images/ or images.zip (env WINOGROUND_DIR)")
    p.add_argument("--model_path", default=None,
                   help="local model instead of --version's hub id: SD pipeline folder (sd), transformers CLIP folder "
                        "(clip) or open_clip checkpoint (openclip)")
    p.add_argument("--log_dir", type=Path, default=Path(os.environ.get("LOG_DIR", "data")), help="where run folders go (env LOG_DIR)")
    p.add_argument("--device", default=None, help="torch device; not given: cuda if available, else cpu")
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N examples")
    add_img_size_arg(p, f"sd: image size ({RESIZE_HELP}); not given: the model's own (512 for SD 2.0, 8 for tiny)")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "xformers"], help="sd: attention kernel")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    p.add_argument("--skip_unreadable", action="store_true",
                   help="leave out examples with an image that cannot be decoded (listed in the final line and the "
                        "manifest, never counted in the scores) instead of stopping with an error naming the file")
    return p.parse_args(argv)


def sd_scorer(args, device: torch.device, dtype: torch.dtype) -> tuple[Callable, RunDescription, dict]:
    """Load the diffusion model; return (score_example, the run's description, the settings beyond it that change numbers)."""
    source = resolve_sd_model(args.version, args.model_path)
    model = load_model(source, device, dtype, args.attention)  # any text-to-image family
    img_size = args.img_size or model.native_size
    latent_shape = model.latent_shape(img_size)
    # without --randomize_noise the batch size is the period of the reused noise rows: 32 unless given
    args.batch_size, _ = resolve_packing(device, math.prod(latent_shape), args.batch_size,
                                         batch_sets_noise=not args.randomize_noise)
    timesteps = interval_timesteps(args.t_interval, model.T)
    n_samples = len(timesteps) * args.n_trials
    n_rows = periodic_noise_needed(n_samples, args.batch_size, args.randomize_noise)
    noise, noise_source = noise_bank(n_rows, latent_shape, args.seed, args.noise_path)
    scorer = Scorer(model.denoiser, model.make_objective(latent_shape), noise, device, dtype, args.batch_size)
    transform = sd_transform(img_size, args.interpolation)

    def score_example(ex, images) -> dict:
        pixels = torch.stack([transform(im) for im in images])  # (2, 3, S, S) in [-1, 1]
        latents = model.encode_images(pixels)  # (2, C, h, w)
        conds = model.encode_prompts([ex.caption_0, ex.caption_1, ""])  # (3, L, D); "" for the unconditional score
        return diffusion_example_scores(scorer, latents, conds, timesteps, args.n_trials, args.randomize_noise,
                                        args.batch_size)

    run = winoground_run(model="sd", version=args.version, model_path=args.model_path, source=source, extra=args.extra,
                         img_size=img_size, native_size=model.native_size, interpolation=args.interpolation,
                         t_interval=args.t_interval, T=model.T, n_trials=args.n_trials,
                         randomize_noise=args.randomize_noise, noise=noise_source,
                         noise_period=None if args.randomize_noise else args.batch_size)
    return score_example, run, model_numerics(source, dtype=str(dtype), attention=args.attention,
                                              noise_digest=noise_digest(noise))


def clip_scorer(args, device: torch.device, dtype: torch.dtype) -> tuple[Callable, RunDescription, dict]:
    """Load CLIP (transformers) or OpenCLIP; return (score_example, the run's description, its dtype)."""
    source, score = load_baseline(args.model, args.version, args.model_path, device, dtype)

    def score_example(ex, images) -> dict:
        return {"scores": score(images, [ex.caption_0, ex.caption_1])}

    return score_example, winoground_run(model=args.model, version=args.version, model_path=args.model_path,
                                         source=source, extra=args.extra), model_numerics(source, dtype=str(dtype))


def main(argv=None) -> dict:
    args = parse_args(argv)  # each flag's range is checked here
    args.version = args.version or DEFAULT_VERSION[args.model]
    if args.model == "sd" and args.version not in SD_VERSIONS:
        raise InputError(f"unknown Stable Diffusion version {args.version!r}; expected one of {', '.join(SD_VERSIONS)}")
    if args.model == "clip" and args.model_path is None and args.version not in CLIP_VERSIONS:
        raise InputError(f"unknown CLIP version {args.version!r}; expected one of {', '.join(CLIP_VERSIONS)} (or --model_path)")
    if args.data_dir is None:
        raise MissingError(f"no Winoground data given: pass --data_dir DIR or set WINOGROUND_DIR; "
                                f"{how_to_obtain('DIR')}")
    examples = load_winoground(args.data_dir, args.limit)  # before the model: a missing copy fails fast
    unreadable = find_unreadable_examples(examples)  # image headers, before the model too
    if unreadable and not args.skip_unreadable:
        raise UnreadableImageError(unreadable[0].name, unreadable[0].found,
                                   found_before_message(unreadable, len(examples), "examples"))
    left_out = {b.index for b in unreadable}
    examples = [ex for ex in examples if ex.id not in left_out]
    if args.model == "sd" and args.noise_path is not None:
        load_noise(args.noise_path)  # a bad noise file fails before the model loads
    check_writable(args.log_dir)

    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = default_dtype(args.dtype, device)
    score_example, run, numerics = (sd_scorer if args.model == "sd" else clip_scorer)(args, device, dtype)
    folder = run.folder(args.log_dir)
    check_manifest(folder, run.manifest, {"versions": environment_info(), "dtype": str(dtype)}, numerics)
    print(f"Run folder: {folder}")

    stats = run_examples(examples, folder, score_example, desc=f"winoground {run.name}",
                         show_progress=not args.no_progress, skip_unreadable=args.skip_unreadable,
                         unreadable=unreadable)
    records = ordered_records(examples, stats)
    summary = summarize(records)
    lines = summary_lines(summary)
    for line in lines:
        print(line)
    result = {"folder": str(folder), "computed": stats.done, "skipped": len(records) - stats.done,
              "repaired": stats.repaired, **summary, "lines": lines,
              "unreadable": [b.name for b in stats.unreadable]}
    print(summary_line(folder, stats, summary))
    write_json(folder / RESULT_FILE, result, sort_keys=False)
    return result


if __name__ == "__main__":
    run_cli(main, unit="examples")
