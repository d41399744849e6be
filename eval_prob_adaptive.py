"""Zero-shot classification with a text-to-image diffusion model (SD 1.x/2.x, SDXL, SD3/SD3.5, Flux, the tiny digits models)."""
from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path

import torch

from diffusion_classifier.cli import (
    RESIZE_HELP,
    add_data_args,
    add_img_size_arg,
    add_run_args,
    add_schedule_args,
    check_statistical_args,
    dataset_options,
    finite_float,
    positive_int,
    statistical_options,
)
from diffusion_classifier.cli import run as run_cli
from diffusion_classifier.calibration import resolve_offsets
from diffusion_classifier.data.datasets import images_digest
from diffusion_classifier.data.images import LateTransform, drop_unreadable
from diffusion_classifier.data.prompts import check_classidx, check_coverage, check_names, read_prompts
from diffusion_classifier.data.registry import (
    DATASETS,
    check_split,
    class_names,
    data_settings,
    dataset_info,
    get_dataset,
    labels_of,
    num_classes,
)
from diffusion_classifier.data.subsets import subset_indices
from diffusion_classifier.data.transforms import sd_transform
from diffusion_classifier.engine import Scorer
from diffusion_classifier.errors import MissingError
from diffusion_classifier.families import SD_VERSIONS, load_model, resolve_model
from diffusion_classifier.loading import default_dtype, model_numerics
from diffusion_classifier.loop import launch_state, shard
from diffusion_classifier.noise import load_noise, noise_bank, noise_digest
from diffusion_classifier.objectives import ERROR_SPACES, FLOW_ERROR_DEFAULT, FLOW_GRIDS
from diffusion_classifier.packing import resolve_packing
from diffusion_classifier.records import check_writable, claim_run_folder, environment_info
from diffusion_classifier.runs import zero_shot_run
from diffusion_classifier.schedules.staged import validate_schedule
from diffusion_classifier.schedules.statistical import make_schedule
from diffusion_classifier.tasks.classify import run_dataset
from diffusion_classifier.weighting import resolve_weights

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # the reference's flags, with its defaults
    p.add_argument("--dataset", default="pets", choices=sorted(DATASETS),
                   help="dataset to classify ('hf': the local Hugging Face dataset at --dataset_root)")
    p.add_argument("--split", default="train", help="dataset split: train or test (--dataset hf: any split it has)")
    p.add_argument("--version", default="2-0", choices=list(SD_VERSIONS), help="model version ('tiny': the shipped digits model, 'fashion': the Fashion-MNIST one; see the README's model families)")
    add_img_size_arg(p, f"image size ({RESIZE_HELP}); not given: the model's own (512 for SD, 8 for tiny)")
    p.add_argument("--batch_size", "-b", type=positive_int, default=None,
                   help="denoiser evaluations per batch (the reference's default: 32); not given: chosen for the device "
                        "(the reference's 32 for 512 px Stable Diffusion latents, up to 256 for small ones); the predictions do not depend on it")
    p.add_argument("--prompt_path", type=Path, default=None, help="prompts CSV (prompt,classname,classidx); not given: prompts/<dataset>_prompts.csv")
    p.add_argument("--interpolation", default="bicubic", choices=["bicubic", "bilinear", "lanczos"], help="resize filter")
    add_schedule_args(p)
    # beyond the reference
    add_run_args(p)
    add_data_args(p)
    p.add_argument("--model", default=None, help="local diffusers pipeline folder or hub id; overrides --version")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "xformers"], help="attention kernel")
    p.add_argument("--channels_last", action="store_true", help="channels_last memory format for the UNet")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow first batches, faster after)")
    p.add_argument("--error_space", default=None, choices=list(ERROR_SPACES),
                   help="compare in ε-space or the model's native output space; not given: eps for DDPM models, "
                        f"{FLOW_ERROR_DEFAULT} for flow models (docs/fashion-mnist.md measures both)")
    p.add_argument("--flow_grid", default="timesteps", choices=list(FLOW_GRIDS),
                   help="flow models: σ of the training timesteps through the scheduler's shift, or evenly spaced σ")
    p.add_argument("--no_t5", action="store_true", help="SD3/SD3.5: do not load the T5 text encoder (zeros in its place)")
    p.add_argument("--guidance", type=finite_float, default=None,
                   help="Flux-dev: value of the guidance embedding; not given: the pipeline's 3.5")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)  # each flag's range is checked here; the checks below need several flags
    validate_schedule(args.to_keep, args.n_samples)
    check_statistical_args(args)
    indices_shard = functools.partial(shard, n_workers=args.n_workers, worker_idx=args.worker_idx)
    indices_shard([])  # checks --worker_idx against --n_workers before any loading

    state, device = launch_state(args.device)
    dtype = default_dtype(args.dtype, device)

    check_split(args.dataset, args.split)
    prompt_path = args.prompt_path or ROOT / "prompts" / f"{args.dataset}_prompts.csv"
    if args.prompt_path is None and dataset_info(args.dataset).prompts_from_copy and not prompt_path.is_file():
        raise MissingError(f"--dataset {args.dataset} has no shipped prompts (its classes are those of the copy at "
                           f"--dataset_root): write them with scripts/write_prompts.py --dataset {args.dataset} "
                           f"--dataset_root DIR{' --split S' if dataset_info(args.dataset).splits is None else ''} and pass --prompt_path")
    table = read_prompts(prompt_path)
    validate_schedule(args.to_keep, args.n_samples, len(table))
    if args.noise_path is not None:
        load_noise(args.noise_path)  # a bad noise file fails before the model loads
    check_writable(args.log_dir)

    # the data and its images are checked before the model loads; the transform follows from the model's size
    transform = LateTransform()
    dataset = get_dataset(args.dataset, args.dataset_root, args.split, transform, **dataset_options(args))
    check_classidx(table, num_classes(args.dataset, dataset), str(prompt_path))
    indices = subset_indices(len(dataset), args.subset_path)
    indices = indices_shard(indices)[state.process_index :: state.num_processes]
    names = class_names(args.dataset, dataset)
    check_coverage(table, labels_of(args.dataset, dataset, indices), names, str(prompt_path))
    check_names(table, names, str(prompt_path))
    indices, unreadable = drop_unreadable(dataset, indices, args.skip_unreadable, not args.no_progress)

    source = resolve_model(args.version, args.model)
    model = load_model(source, device, dtype, args.attention, no_t5=args.no_t5, guidance=args.guidance)
    if args.channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    if args.compile:
        setattr(model, model.backbone_name, torch.compile(model.backbone))
    validate_schedule(args.to_keep, args.n_samples, len(table), model.T)  # before the run folder is claimed
    img_size = args.img_size or model.native_size
    latent_shape = model.latent_shape(img_size)
    batch_size, image_batch = resolve_packing(device, math.prod(latent_shape), args.batch_size, args.image_batch)

    transform.transform = sd_transform(img_size, args.interpolation)

    tw, tw_digest = resolve_weights(args.timestep_weights, source, model.T, args.loss)
    objective = model.make_objective(latent_shape, args.error_space, args.flow_grid)
    candidates = [list(r) for r in zip(table.prompts, table.classidx)]
    offsets = resolve_offsets(args.class_offsets, source, args.loss, objective.error_space, tw_digest,
                              candidates)
    classify, n_rows = make_schedule(args.schedule, args.to_keep, args.n_samples, args.n_trials, T=model.T,
                                     weights=tw.weights if tw else None, loss=args.loss, **statistical_options(args),
                                     shift=None if offsets is None else offsets.shift(table.classidx))
    noise, noise_source = noise_bank(n_rows, latent_shape, args.seed, args.noise_path)
    scorer = Scorer(model.denoiser, objective, noise, device, dtype, batch_size, pad_to_batch=args.compile)

    run = zero_shot_run(
        version=args.version, model=args.model, source=source, dataset=args.dataset, split=args.split,
        img_size=img_size, n_trials=args.n_trials, to_keep=args.to_keep, n_samples=args.n_samples, loss=args.loss,
        interpolation=args.interpolation, noise=noise_source, prompts=candidates,
        subset=str(args.subset_path) if args.subset_path else None, corruption=args.corruption, severity=args.severity,
        schedule=args.schedule, **statistical_options(args),
        timestep_weights=tw_digest, class_offsets=None if offsets is None else offsets.setting(table.classidx),
        objective=objective, error_space=args.error_space, flow_grid=args.flow_grid, no_t5=args.no_t5, guidance=args.guidance,
        extra=args.extra, root=args.dataset_root, data=data_settings(args.dataset, dataset))
    folder = run.folder(args.log_dir)
    claim_run_folder(folder, run.manifest, {"versions": environment_info(), "dtype": str(dtype)}, state,
                     numerics=model_numerics(source, dtype=str(dtype), attention=args.attention,
                                              noise_digest=noise_digest(noise), **images_digest(dataset)))

    embeds = model.encode_prompts(table.prompts)
    stats = run_dataset(dataset, indices, folder, model.encode_images, scorer, embeds, table.classidx, classify,
                        args.loss, image_batch, args.load_stats, desc=f"{args.dataset} {run.name}",
                        show_progress=not args.no_progress, skip_unreadable=args.skip_unreadable,
                        unreadable=unreadable)
    print(stats.summary(folder))
    return {"folder": str(folder), "accuracy": stats.accuracy, **stats.as_dict()}


if __name__ == "__main__":
    run_cli(main)
