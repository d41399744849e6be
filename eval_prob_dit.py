"""Classification with a class-conditional DiT (DiT-XL/2 on ImageNet, or the tiny digits model).

Per-class mode (the reference's): `--cls C` scores class C against every image and stores the raw
numbers per (t, trial) in LOG_DIR/<dataset>[_<extra>]/<run>/<C>/<idx>.pt, with
<run> = <model>_<t_interval>int_<n_trials>trials[_randnoise][_vb|_spatial|_eps|_eps_and_var];
one run per class, then `scripts/print_dit_acc.py LOG_DIR/<dataset>/<run>` picks the lowest class.
Adaptive mode: `--to_keep K.. --n_samples N..` scores every class of each image in one run with
staged pruning and writes {errors, pred, label} per image to LOG_DIR/<dataset>[_<extra>]/<run>, with
<run> = <model>_<n_trials>trials_<keeps>keep_<samples>samples[_<loss>][_stat_z<z>_min<m>][_null],
read by `scripts/print_acc.py`. <model> is the last component of the model id or folder.
"""
from __future__ import annotations

import argparse
import math

import torch

from diffusion_classifier.calibration import resolve_offsets
from diffusion_classifier.cli import (
    HelpFormatter,
    add_data_args,
    add_img_size_arg,
    add_run_args,
    add_schedule_args,
    check_statistical_args,
    dataset_options,
    non_negative_int,
    positive_int,
    statistical_options,
)
from diffusion_classifier.cli import run as run_cli
from diffusion_classifier.data.datasets import images_digest
from diffusion_classifier.data.images import drop_unreadable
from diffusion_classifier.data.registry import (
    candidate_classes,
    check_split,
    class_conditional_datasets,
    class_map_setting,
    data_settings,
    get_dataset,
    num_classes,
)
from diffusion_classifier.data.subsets import subset_indices
from diffusion_classifier.data.transforms import dit_transform
from diffusion_classifier.engine import Scorer
from diffusion_classifier.errors import InputError
from diffusion_classifier.families.dit import load_class_conditional, resolve_dit_model
from diffusion_classifier.loading import default_dtype, model_numerics
from diffusion_classifier.loop import launch_state, shard
from diffusion_classifier.noise import load_noise, noise_bank, noise_digest, periodic_noise_needed
from diffusion_classifier.packing import resolve_packing
from diffusion_classifier.records import check_writable, claim_run_folder, environment_info
from diffusion_classifier.runs import class_adaptive_run, per_class_run
from diffusion_classifier.schedules.staged import interval_timesteps, validate_schedule
from diffusion_classifier.schedules.statistical import make_schedule
from diffusion_classifier.tasks.classify import run_dataset
from diffusion_classifier.tasks.per_class import (
    NullNormalizedScorer,
    make_reducer,
    run_per_class,
    save_mode,
    schedule_from_alphas_cumprod,
    summary_line,
)
from diffusion_classifier.weighting import resolve_weights


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # the reference's flags, with its defaults
    p.add_argument("--cls", type=non_negative_int, default=None,
                   help="per-class mode: the class (model label, 0..classes-1) scored against every image")
    p.add_argument("--t_interval", type=positive_int, default=5,
                   help="per-class mode: timesteps range(t_interval//2, T, t_interval), at most T (paper: 4)")
    p.add_argument("--dataset", default="imagenet", choices=class_conditional_datasets(), help="dataset to classify")
    p.add_argument("--split", default="test",
                   help="dataset split: train or test (ImageNet's test is its val set, the one the paper reports); "
                        "--dataset hf: any split it has")
    add_img_size_arg(p, "image size the model takes, S (or H W with H = W: a DiT takes squares); not given: 256 for "
                        "DiT-XL/2, the model's own for --model", "--image-size", "--image_size", dest="image_size")
    p.add_argument("--spatial", action="store_true", help="per-class mode: store the per-pixel l2 map (mean over channels) [n_t, n_trials, H, W]")
    p.add_argument("--save_eps", action="store_true", help="per-class mode: store ε̂ [n_t, n_trials, C, H, W] in the model's dtype")
    p.add_argument("--save_eps_and_var", action="store_true", help="per-class mode: store the whole output [n_t, n_trials, 2C, H, W]")
    p.add_argument("--save_vb", action="store_true",
                   help="per-class mode: store mse, l1, KL (bits/dim), decoder NLL (bits/dim) [n_t, n_trials, 4]")
    p.add_argument("--batch_size", "-b", type=positive_int, default=None,
                   help="denoiser evaluations per batch (the reference's default: 32); not given: 32 where it sets the "
                        "noise (per-class mode without --randomize_noise), else chosen for the device (the reference's 32 for 512 px Stable Diffusion latents, up to 256 for small ones)")
    p.add_argument("--imgs_to_eval", type=positive_int, default=None, help="evaluate only the first N images (of the subset)")
    p.add_argument("--randomize_noise", action="store_true",
                   help="per-class mode: the i-th (t, trial) uses noise row i; otherwise each batch reuses rows 0..batch_size-1")
    # beyond the reference
    add_run_args(p)
    add_data_args(p)
    p.add_argument("--model", default=None, help="DiT pipeline folder or hub id ('tiny': the shipped digits DiT, 'fashion': the Fashion-MNIST one); not given: facebook/DiT-XL-2-<size>")
    p.add_argument("--vae", default=None,
                   help="VAE hub id or folder; not given: the pipeline's own (the hub DiT-XL/2 pipelines ship stabilityai/sd-vae-ft-ema)")
    # adaptive mode
    add_schedule_args(p, mode="adaptive mode: ", required=False)
    p.add_argument("--null_normalize", action="store_true",
                   help="adaptive mode: subtract the null class's error on the same (t, ε) from every class's error; "
                        "all classes share their (t, ε), so predictions and pruning do not change: it only makes the stored "
                        "errors relative to the unconditional model, at one extra evaluation per (t, ε)")
    return p.parse_args(argv)


def check_flags(args: argparse.Namespace) -> str:
    """Validate flag combinations (parse_args checked each flag's range); returns 'per_class' or 'adaptive'."""
    mode = save_mode(args.spatial, args.save_eps, args.save_eps_and_var, args.save_vb)
    shard([], args.n_workers, args.worker_idx)  # checks --worker_idx against --n_workers
    if (args.to_keep is None) != (args.n_samples is None):
        raise InputError("adaptive mode needs both --to_keep and --n_samples")
    if args.to_keep is None:
        if args.cls is None:
            raise InputError("pass --cls C (per-class mode) or --to_keep and --n_samples (adaptive mode)")
        if args.null_normalize or args.schedule != "reference" or args.loss != "l2" or args.delta is not None \
                or args.timestep_weights is not None or args.epsilon is not None or args.spending is not None \
                or args.class_offsets is not None:
            raise InputError("--null_normalize, --schedule, --delta, --epsilon, --spending, --timestep_weights, "
                             "--class_offsets and --loss are adaptive-mode flags; per-class mode stores l2 (or --save_vb terms)")
        return "per_class"
    validate_schedule(args.to_keep, args.n_samples)
    check_statistical_args(args)
    if args.cls is not None:
        raise InputError("--cls is per-class mode; adaptive mode (--to_keep/--n_samples) scores every class")
    if mode != "l2" or args.randomize_noise:
        raise InputError("--spatial, --save_eps, --save_eps_and_var, --save_vb and --randomize_noise are per-class-mode flags")
    return "adaptive"


def main(argv=None) -> dict:
    args = parse_args(argv)
    run_mode = check_flags(args)
    kind = save_mode(args.spatial, args.save_eps, args.save_eps_and_var, args.save_vb)

    check_split(args.dataset, args.split)
    if args.noise_path is not None:
        load_noise(args.noise_path)  # a bad noise file fails before the model loads
    check_writable(args.log_dir)
    state, device = launch_state(args.device)
    dtype = default_dtype(args.dtype, device)

    source = resolve_dit_model(args.image_size or 256, args.model)
    model = load_class_conditional(source, device, dtype, args.vae)
    img_size = args.image_size or model.native_size
    latent_shape = model.latent_shape(img_size)
    # without --randomize_noise the per-class mode reuses noise rows with period batch_size
    batch_size, image_batch = resolve_packing(device, math.prod(latent_shape), args.batch_size, args.image_batch,
                                              batch_sets_noise=run_mode == "per_class" and not args.randomize_noise)
    if run_mode == "per_class" and not 0 <= args.cls < model.num_classes:
        raise InputError(f"--cls must be in 0..{model.num_classes - 1} for this model ({model.num_classes} classes), "
                         f"got {args.cls}")

    # after the model, so that a --cls outside its classes fails before any data is read; before any scoring
    dataset = get_dataset(args.dataset, args.dataset_root, args.split, dit_transform(img_size), **dataset_options(args))
    indices = subset_indices(len(dataset), args.subset_path)[: args.imgs_to_eval]
    indices = shard(indices, args.n_workers, args.worker_idx)[state.process_index :: state.num_processes]
    indices, unreadable = drop_unreadable(dataset, indices, args.skip_unreadable, not args.no_progress)

    classes, labels = candidate_classes(args.dataset, num_classes(args.dataset, dataset), model.num_classes, dataset,
                                        model.id2label)
    if run_mode == "per_class":
        if kind == "vb" and not model.learned_variance:
            raise InputError(f"--save_vb needs a learned-variance model (2C output channels); {source} outputs "
                             f"{model.transformer.config.out_channels} channels for {latent_shape[0]}")
        if kind == "vb" and model.prediction_type != "epsilon":
            raise InputError(f"--save_vb needs an epsilon-prediction model (the reference's DiT); {source}'s scheduler "
                             f"gives prediction_type {model.prediction_type!r}")
        timesteps = interval_timesteps(args.t_interval, model.T)
        n_rows = periodic_noise_needed(len(timesteps) * args.n_trials, batch_size, args.randomize_noise)
    else:
        tw, tw_digest = resolve_weights(args.timestep_weights, source, model.T, args.loss)
        offsets = None if args.null_normalize else resolve_offsets(args.class_offsets, source, args.loss, None,
                                                                   tw_digest, classes)
        cand_labels = range(len(classes))  # calibration.candidate_classes_of: a DiT run's candidate k is class k
        classify, n_rows = make_schedule(args.schedule, args.to_keep, args.n_samples, args.n_trials, T=model.T,
                                         weights=tw.weights if tw else None, loss=args.loss,
                                         **statistical_options(args),
                                         shift=None if offsets is None else offsets.shift(cand_labels))
    noise, noise_source = noise_bank(n_rows, latent_shape, args.seed, args.noise_path)
    scorer = Scorer(model.denoiser, model.make_objective(latent_shape), noise, device, dtype, batch_size)  # its prediction type
    common = dict(source=source, vae=args.vae, dataset=args.dataset, split=args.split, img_size=img_size,
                  n_trials=args.n_trials, noise=noise_source, corruption=args.corruption, severity=args.severity,
                  extra=args.extra, root=args.dataset_root, data=data_settings(args.dataset, dataset))
    if run_mode == "per_class":  # the map from model classes to the labels of a folder of some of them
        common["data"] = {**common["data"], **class_map_setting(args.dataset, classes)}
    info = {"versions": environment_info(), "dtype": str(dtype)}
    numerics = model_numerics(source, dtype=str(dtype), noise_digest=noise_digest(noise),  # beyond the folder name
                              **images_digest(dataset))

    if run_mode == "per_class":
        run = per_class_run(**common, t_interval=args.t_interval, kind=kind, randomize_noise=args.randomize_noise,
                            batch_size=batch_size)
        folder = run.folder(args.log_dir)
        claim_run_folder(folder, run.manifest, info, state, numerics)
        reduce = make_reducer(kind, schedule_from_alphas_cumprod(model.alphas_cumprod), dtype)
        stats = run_per_class(dataset, indices, folder / str(args.cls), model.encode_images, scorer, args.cls,
                              timesteps, args.n_trials, args.randomize_noise, kind, reduce, image_batch,
                              desc=f"{args.dataset} {run.name} class {args.cls}", show_progress=not args.no_progress,
                              skip_unreadable=args.skip_unreadable, unreadable=unreadable)
        print(summary_line(folder / str(args.cls), stats, len(timesteps) * args.n_trials))
        return {"folder": str(folder), "class_folder": str(folder / str(args.cls)), **stats.as_dict()}

    run = class_adaptive_run(**common, to_keep=args.to_keep, n_samples=args.n_samples, loss=args.loss,
                             schedule=args.schedule, **statistical_options(args),
                             null_normalize=args.null_normalize, classes=classes,
                             timestep_weights=tw_digest,
                             class_offsets=None if offsets is None else offsets.setting(cand_labels))
    folder = run.folder(args.log_dir)
    validate_schedule(args.to_keep, args.n_samples, len(classes), model.T)
    claim_run_folder(folder, run.manifest, info, state, numerics)
    runner_scorer = NullNormalizedScorer(scorer, model.null_class) if args.null_normalize else scorer
    stats = run_dataset(dataset, indices, folder, model.encode_images, runner_scorer, torch.tensor(classes), labels,
                        classify, args.loss, image_batch, args.load_stats, desc=f"{args.dataset} {run.name}",
                        show_progress=not args.no_progress, skip_unreadable=args.skip_unreadable,
                        unreadable=unreadable)
    extra = runner_scorer.extra_evaluations if args.null_normalize else 0
    print(stats.summary(folder, extra))
    return {"folder": str(folder), "accuracy": stats.accuracy, **stats.as_dict(), "evaluations": stats.evaluations + extra}


if __name__ == "__main__":
    run_cli(main)
