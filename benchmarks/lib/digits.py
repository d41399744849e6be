"""Accuracy, evaluations and seconds per image of one schedule on the digits test split, and their table."""
from __future__ import annotations

import time

import torch

from diffusion_classifier.data.digits import DigitsDataset
from diffusion_classifier.data.transforms import sd_transform
from diffusion_classifier.engine import Scorer
from diffusion_classifier.noise import make_noise
from diffusion_classifier.schedules.statistical import make_schedule


def digits_test(model, limit: int | None = None):
    """(latents (N, C, 8, 8), labels (N,)) of the digits test split, encoded by `model`."""
    ds = DigitsDataset("test", transform=sd_transform(model.native_size))
    n = len(ds) if limit is None else min(limit, len(ds))
    pixels = torch.stack([ds[i][0] for i in range(n)])
    return model.encode_images(pixels), torch.tensor(ds.targets[:n])


def schedule_fn(spec: dict, T: int):
    """(classify, noise rows) from {'to_keep','n_samples'} or {'z','max_samples','min_samples'}."""
    if "z" in spec:
        return make_schedule("statistical", [1], [spec["max_samples"]], z=spec["z"],
                             min_samples=spec.get("min_samples", 10), T=T)
    return make_schedule("reference", spec["to_keep"], spec["n_samples"], T=T)


def run(model, conds, candidate_class, latents, labels, spec: dict, batch_size: int = 500, seed: int = 0,
        loss: str = "l2", chunk: int = 120, flow_grid: str = "timesteps", error_space: str | None = None) -> dict:
    """Accuracy, denoiser evaluations per image and seconds per image of one schedule on all images.

    The model's own objective (its scheduler config) noises and compares, in its default error space;
    `flow_grid` picks the σ grid of flow models, `error_space` overrides the default comparison."""
    classify, n_rows = schedule_fn(spec, model.T)
    noise = make_noise(n_rows, tuple(latents.shape[1:]), seed)
    objective = model.make_objective(tuple(latents.shape[1:]), error_space, flow_grid)  # the model's own (ε, v or flow)
    scorer = Scorer(model.denoiser, objective, noise, model.device, model.dtype, batch_size)
    n_evals, preds = 0, []
    start = time.perf_counter()
    for i in range(0, len(latents), chunk):
        x = latents[i : i + chunk]

        def evaluate(jobs):
            nonlocal n_evals
            n_evals += len(jobs)
            return scorer.evaluate(x, conds, jobs, loss)

        preds += [candidate_class[r.pred] for r in classify(evaluate, len(x), len(conds))]
    seconds = time.perf_counter() - start
    correct = sum(int(p == int(y)) for p, y in zip(preds, labels))
    return {"accuracy": 100.0 * correct / len(labels), "evals_per_image": n_evals / len(labels),
            "seconds_per_image": seconds / len(labels), "n_images": len(labels)}


def describe(spec: dict) -> str:
    if "z" in spec:
        return f"statistical z={spec['z']:g} (max {spec['max_samples']}, min {spec.get('min_samples', 10)})"
    if spec["to_keep"] == [1]:
        return f"all classes x {spec['n_samples'][0]} timesteps"
    return "keep " + " ".join(map(str, spec["to_keep"])) + " / samples " + " ".join(map(str, spec["n_samples"]))


def markdown_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| method | top-1 (%) | evaluations / image | s / image |", "|---|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['accuracy']:.2f} | {r['evals_per_image']:.0f} | {r['seconds_per_image']:.4f} |")
    return "\n".join(lines)
