"""Whole processes at the reference's command line: eval_prob_adaptive.py at its defaults vs the re-created reference.

Both run as separate Python processes on the same images, noise and schedule, timed from launch to
exit (imports, model loading, records included), interleaved, the median of --repeats each; their
records are compared for predictions and errors. The reference side is this script with
--reference_process: lib/reference_loop.py's loop with the same model loading, pre-processing, prompts and
seed-0 noise bank as eval_prob_adaptive.py, one image at a time in batches of 32, one record per image.

    python benchmarks/whole_process.py --model tiny --n_images 64 --repeats 2 --threads 1 \
        --json benchmarks/results/whole_process_tiny.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lib import ROOT, HelpFormatter
from lib.reference_loop import reference_classify
from lib.results import write_result

from diffusion_classifier.loading import default_dtype
from diffusion_classifier.records import load_record
from diffusion_classifier.schedules.staged import n_evaluations
from diffusion_classifier.schedules.statistical import make_schedule


def reference_process(version: str, dataset: str, split: str, to_keep, n_samples, subset_path: Path,
                      out_folder: Path, seed: int = 0, device: str | None = None) -> None:
    """What the reference's script does, re-created: load, then one image at a time, one record each.

    Same model loading, pre-processing, prompts and noise bank (seed `seed`) as eval_prob_adaptive.py
    at its defaults; each record is {pred, label, errors} like the reference's.
    """
    from diffusion_classifier.data.registry import get_dataset
    from diffusion_classifier.data.transforms import sd_transform
    from diffusion_classifier.families import resolve_sd_model
    from diffusion_classifier.families.sd import load_text_conditional
    from diffusion_classifier.noise import noise_bank
    from diffusion_classifier.data.prompts import read_prompts
    from diffusion_classifier.records import save_record

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = default_dtype(None, dev)
    model = load_text_conditional(resolve_sd_model(version, None), dev, dtype)
    img_size = model.native_size
    data = get_dataset(dataset, Path(os.environ.get("DATASET_ROOT", "datasets")), split, sd_transform(img_size, "bicubic"))
    table = read_prompts(ROOT / "prompts" / f"{dataset}_prompts.csv")
    _, rows = make_schedule("reference", to_keep, n_samples, 1, T=model.T)
    noise, _ = noise_bank(rows, model.latent_shape(img_size), seed)
    embeds = model.encode_prompts(table.prompts)
    out_folder.mkdir(parents=True, exist_ok=True)
    for i in np.load(subset_path).tolist():
        image, label = data[i]
        latent = model.encode_images(image[None])
        (pred, errors), = reference_classify(model.unet, latent, embeds, model.alphas_cumprod, noise, to_keep,
                                             n_samples, 1, 32, "l2", dev, dtype)
        save_record({"pred": int(table.classidx[pred]), "label": int(label), "errors": errors},
                    out_folder / f"{i}.pt")


def _timed_process(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process run to its exit; CPU time is less hit by other load."""
    import resource
    import subprocess

    def child_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    cpu, start = child_cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, child_cpu() - cpu
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, cpu


def compare_records(reference_folder: Path, ours_folder: Path, n_images: int) -> tuple[int, float, int]:
    """(same predictions, max abs difference of the errors, errors compared) of two runs' records of images 0..n-1."""
    same, diff, compared = 0, 0.0, 0
    for i in range(n_images):
        a = load_record(reference_folder / f"{i}.pt")
        (b_path,) = [p for p in ours_folder.glob("*.pt") if int(p.stem) == i]
        b = load_record(b_path)
        same += int(a["pred"] == b["pred"])
        for c, entry in a["errors"].items():
            if c in b["errors"] and len(entry["pred_errors"]) == len(b["errors"][c]["pred_errors"]):
                d = (entry["pred_errors"].double() - b["errors"][c]["pred_errors"].double()).abs().max().item()
                diff, compared = max(diff, d), compared + len(entry["pred_errors"])
    return same, diff, compared


def whole_process_benchmark(version: str, dataset: str, split: str, n_images: int, to_keep, n_samples,
                            repeats: int, work_dir: Path, threads: int | None = None) -> dict:
    """Wall time of `eval_prob_adaptive.py` at its defaults vs the re-created reference script, same images."""
    from diffusion_classifier.data.prompts import read_prompts

    work_dir.mkdir(parents=True, exist_ok=True)
    subset = work_dir / "subset.npy"
    np.save(subset, np.arange(n_images))
    schedule = ["--to_keep", *map(str, to_keep), "--n_samples", *map(str, n_samples)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    # the reference's own flags only; LOG_DIR (an environment variable) keeps the runs apart
    ours = [sys.executable, "eval_prob_adaptive.py", "--version", version, "--dataset", dataset, "--split", split,
            *schedule, "--subset_path", str(subset)]
    ref = [sys.executable, str(Path(__file__).resolve()), "--reference_process", "--model", version,
           "--dataset", dataset, "--split", split, *schedule]
    times = {"ours": [], "reference": []}
    cpu_times = {"ours": [], "reference": []}
    for k in range(repeats):
        env["LOG_DIR"] = str(work_dir / f"ours{k}")
        for name, cmd in (("ours", ours), ("reference", ref + ["--subset_path", str(subset), "--out",
                                                               str(work_dir / f"ref{k}")])):
            wall, cpu = _timed_process(cmd, env)
            times[name].append(wall)
            cpu_times[name].append(cpu)
        print(f"  repeat {k}: ours {times['ours'][-1]:.2f} s ({cpu_times['ours'][-1]:.2f} s CPU), reference "
              f"{times['reference'][-1]:.2f} s ({cpu_times['reference'][-1]:.2f} s CPU)", flush=True)
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["reference"])
    ours_cpu, ref_cpu = statistics.median(cpu_times["ours"]), statistics.median(cpu_times["reference"])
    (folder,) = [p.parent for p in (work_dir / "ours0").rglob("manifest.json")]
    same, diff, compared = compare_records(work_dir / "ref0", folder, n_images)
    n_prompts = len(read_prompts(ROOT / "prompts" / f"{dataset}_prompts.csv").prompts)
    evaluations = n_images * n_evaluations(n_prompts, to_keep, n_samples)
    return {"mode": "whole_process", "command": " ".join(ours[1:]), "reference_command": " ".join(ref[1:]),
            "n_images": n_images, "evaluations": evaluations, "times_s": times, "ours_s": ours_s, "reference_s": ref_s,
            "ours_evals_per_s": evaluations / ours_s, "reference_evals_per_s": evaluations / ref_s,
            "speedup": ref_s / ours_s, "cpu_times_s": cpu_times, "ours_cpu_s": ours_cpu, "reference_cpu_s": ref_cpu,
            "cpu_time_ratio": ref_cpu / ours_cpu, "same_predictions": same, "max_abs_diff": diff, "errors_compared": compared,
            "threads": threads}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="tiny", help="--version of both runs (tiny: the shipped digits model)")
    p.add_argument("--dataset", default="digits", help="dataset (digits ships with the package)")
    p.add_argument("--split", default="test", help="dataset split")
    p.add_argument("--n_images", type=int, default=16, help="the first N images of the split")
    p.add_argument("--to_keep", nargs="+", type=int, default=[5, 1], help="prompts kept after each stage")
    p.add_argument("--n_samples", nargs="+", type=int, default=[10, 50], help="timesteps of each stage")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each process (the median counts)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of both processes; default unset")
    p.add_argument("--work_dir", type=Path, default=None, help="run folders; default a temporary one")
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    r = p.add_argument_group("the reference side", "this script runs itself with these to re-create the reference's "
                             "script in a child process (--model, --dataset, --split, --to_keep, --n_samples as above)")
    r.add_argument("--reference_process", action="store_true",
                   help="be the re-created reference script: classify the --subset_path images, one record each in --out")
    r.add_argument("--subset_path", type=Path, default=None, help="reference side: .npy of the dataset indices to classify")
    r.add_argument("--out", type=Path, default=None, help="reference side: folder of its records")
    r.add_argument("--seed", type=int, default=0, help="reference side: seed of the noise bank")
    r.add_argument("--device", default=None, help="reference side: torch device; default cuda if available, else cpu")
    args = p.parse_args(argv)
    if args.reference_process and (args.subset_path is None or args.out is None):
        p.error("--reference_process needs --subset_path and --out")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.reference_process:
        reference_process(args.model, args.dataset, args.split, args.to_keep, args.n_samples, args.subset_path,
                          args.out, args.seed, args.device)
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or Path(tmp)
        print(f"whole process, {args.model} on {args.n_images} {args.dataset} {args.split} images, keep {args.to_keep} "
              f"samples {args.n_samples}, {args.repeats} repeat(s) interleaved", flush=True)
        out = whole_process_benchmark(args.model, args.dataset, args.split, args.n_images, args.to_keep,
                                      args.n_samples, args.repeats, work_dir, args.threads)
    print(f"ours:      {out['command']}\n           {out['ours_s']:.2f} s, {out['ours_evals_per_s']:.4g} evals/s")
    print(f"reference: {out['reference_s']:.2f} s, {out['reference_evals_per_s']:.4g} evals/s (whole process)")
    print(f"CPU time:  ours {out['ours_cpu_s']:.2f} s, reference {out['reference_cpu_s']:.2f} s: "
          f"{out['cpu_time_ratio']:.2f}x less")
    print(f"whole process: {out['speedup']:.2f}x the reference; same prediction for {out['same_predictions']}/"
          f"{out['n_images']} images, errors max abs diff {out['max_abs_diff']:.3g} over {out['errors_compared']}")
    out["torch"] = torch.__version__
    if args.json:
        write_result(args.json, out, __file__, argv, sort_keys=True)
    return out


if __name__ == "__main__":
    main()
