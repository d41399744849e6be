"""Full-evaluation records of the shipped digits models on clean and corrupted digits (digits_c).

For every (model, set) it scores every class at the 200 timesteps of statistical.stratified_timesteps
(the k-th timestep with noise row k, the order and rows the statistical schedules use) on a fixed
stratified subset of the test split, one record per image in a resumable run folder, the same
records as `eval_prob_adaptive.py --schedule statistical --to_keep 1 --n_samples 200 --min_samples 200`
(and eval_prob_dit.py's adaptive mode) write. benchmarks/schedules_digits_c.py replays every
schedule on these errors; scripts/fit_timestep_weights.py and scripts/print_acc.py read them.

Run it in the background (it resumes): OMP_NUM_THREADS=1 nohup python benchmarks/digits_c_full.py &
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lib import CACHE, ROOT, HelpFormatter
from lib.digits_c import SETS, full_run, set_name
from lib.replay import N_TIMESTEPS

from diffusion_classifier.data.prompts import read_prompts
from diffusion_classifier.data.registry import get_dataset
from diffusion_classifier.data.subsets import stratified_indices
from diffusion_classifier.data.transforms import dit_transform, sd_transform
from diffusion_classifier.engine import Scorer
from diffusion_classifier.families import SD_VERSIONS
from diffusion_classifier.families.dit import DIT_MODELS, load_class_conditional
from diffusion_classifier.families.sd import load_text_conditional
from diffusion_classifier.noise import make_noise
from diffusion_classifier.records import check_manifest
from diffusion_classifier.schedules.statistical import make_schedule
from diffusion_classifier.tasks.classify import run_dataset


def stratified_subset(per_class: int, seed: int = 0) -> list[int]:
    """per_class test images of every digit, chosen by a seeded permutation; sorted indices."""
    from diffusion_classifier.data.digits import load_digits_arrays

    return stratified_indices(load_digits_arrays("test")[1], per_class, seed)


def load_model(name: str):
    """(model, conditions, candidate classes, transform) of 'sd' (digits-sd) or 'dit' (digits-dit)."""
    if name == "sd":
        model = load_text_conditional(SD_VERSIONS["tiny"])
        table = read_prompts(ROOT / "prompts" / "digits_prompts.csv")
        return model, model.encode_prompts(table.prompts), table.classidx, sd_transform(model.native_size)
    model = load_class_conditional(DIT_MODELS["tiny"])
    return model, torch.arange(10), list(range(10)), dit_transform(model.native_size)


def compute(model_name: str, model, conds, classes, transform, corruption, severity, indices, batch_size: int,
            seed: int) -> dict:
    ds = get_dataset("digits" if corruption is None else "digits_c", ".", "test", transform,
                     corruption=corruption, severity=severity)
    classify, n_rows = make_schedule("statistical", [1], [N_TIMESTEPS], min_samples=N_TIMESTEPS, T=model.T)
    noise = make_noise(n_rows, model.latent_shape(model.native_size), seed)
    scorer = Scorer(model.denoiser, model.alphas_cumprod, noise, model.device, model.dtype, batch_size)
    run = full_run(model_name, corruption, severity, seed)
    folder = run.folder(CACHE)
    check_manifest(folder, run.manifest)
    start = time.perf_counter()
    stats = run_dataset(ds, indices, folder, model.encode_images, scorer, conds, classes, classify,
                        image_batch=20, show_progress=False)
    sec = time.perf_counter() - start
    return {"folder": str(folder), "done": stats.done, "skipped": stats.skipped,
            "seconds_per_image": sec / max(stats.done, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--per_class", type=int, default=10, help="test images per digit in the subset")
    p.add_argument("--models", nargs="+", default=["dit", "sd"], choices=["sd", "dit"],
                   help="sd: the shipped digits-sd, dit: the shipped digits-dit")
    p.add_argument("--max_sets", type=int, default=None, help="only the first N sets of the list")
    p.add_argument("--batch_size", type=int, default=500, help="denoiser evaluations per batch")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    indices = stratified_subset(args.per_class)
    np.save(CACHE / "subset.npy", np.array(indices)) if CACHE.is_dir() else None
    models = {m: load_model(m) for m in args.models}
    for corruption, severity in SETS[: args.max_sets]:
        for name, (model, conds, classes, transform) in models.items():
            r = compute(name, model, conds, classes, transform, corruption, severity, indices, args.batch_size, args.seed)
            print(f"{name} {set_name(corruption, severity)}: {r}", flush=True)


if __name__ == "__main__":
    main()
