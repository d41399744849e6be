"""Which bounded rule `--schedule statistical --delta D` should use by default, chosen on images the models never
trained on (held-out train images), never on the images it is reported on.

Every rule of the anytime schedule (delta = 0.05) in a grid of its settings (the variance estimator, the
spending of delta over the looks, the first look, the indifference zone) is run on each held-out set; the errors
are computed once and shared (lib/lazy_errors.py: a rule replayed from the table computes exactly what a real
run of it would). The sets:

- pairs100: fashion-pairs, the 100-way classification of the ordered pair, one pair per class built from its
  held-out train items (heldout_train.json; seed 1), with at most 200 timesteps per class (the issue's command);
- flow10 / sd10 / dit10 / digits10: fashion-flow (in its default error space) / fashion-sd / fashion-dit (its
  class labels) / digits-sd (`tiny`) on 10 train images per class (from the model's held-out images when it has
  them, else from the train split: then marked seen), with at most 500 timesteps per class (the reference's
  CIFAR-10 command `--to_keep 5 1 --n_samples 50 500` with `--schedule statistical` added).

The rule kept: the one with the fewest evaluations (geometric mean over the sets of its ratio to the current
rule, `--variance iid --spending even --min_samples 10`) among those within `--tolerance` images per 100 of
the current rule's accuracy on every set. A set's error table is keyed by a digest of its model's weights, so a
retrained model recomputes it.

    python benchmarks/default_rule.py --sets pairs100 flow10 sd10 dit10 digits10
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from lib import CACHE, RESULTS, HelpFormatter
from lib.lazy_errors import LazyErrors
from lib.results import write_result

OUT = RESULTS / "default_rule.json"
DELTA = 0.05
CURRENT = {"variance": "iid", "spending": "even", "min_samples": 10, "epsilon": None}  # the rule before this choice (the "plain" rule)
SETS = ("pairs100", "flow10", "sd10", "dit10", "digits10")
GRID = {"variance": ["iid", "stratified", "moderated", "moderated-stratified"], "spending": ["even", "decaying"],
        "min_samples": [5, 10], "epsilon": [None, 0.005, 0.01, 0.02]}


def heldout_items(folder: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(images, labels, never trained on) of lib.fashion.heldout_picks, in its order (the error tables' rows)."""
    from diffusion_classifier.data.fashion_mnist import load_arrays

    from lib.fashion import heldout_picks

    images, labels = load_arrays("train")
    pick, unseen = heldout_picks(folder, per_class, seed)
    return images[pick], labels[pick], unseen


def make_set(name: str):
    """(model version, PIL images, labels, prompts, max_samples, unseen) of a held-out set."""
    from PIL import Image

    from lib.pairs import fashion_words, pair_classes, pair_image

    if name == "pairs100":
        words, names = fashion_words()
        images, labels, unseen = heldout_items("fashion-pairs", 10, 1)  # 10 items per class, pairs drawn from them
        rng = np.random.default_rng(1)
        by_class = [np.flatnonzero(labels == c) for c in range(10)]
        pil, y = [], []
        for pair in range(100):
            a, b = divmod(pair, 10)
            pil.append(pair_image(images[rng.choice(by_class[a])], images[rng.choice(by_class[b])]).convert("RGB"))
            y.append(pair)
        return "fashion-pairs", pil, np.array(y), [p for p, _ in pair_classes(words, names)], 200, unseen
    from diffusion_classifier.data.prompts import DATASET_PROMPTS

    if name == "digits10":
        from diffusion_classifier.data.digits import load_digits_arrays
        from diffusion_classifier.data.subsets import stratified_indices

        images, labels = load_digits_arrays("train")
        pick = stratified_indices(labels, 10, 0)
        images, labels, unseen, version, dataset = images[pick], labels[pick], False, "tiny", "digits"
    else:
        version, folder = {"flow10": ("fashion-flow", "fashion-flow"), "sd10": ("fashion", "fashion-sd"),
                           "dit10": ("fashion-dit", "fashion-dit")}[name]
        images, labels, unseen = heldout_items(folder, 10, 0)
        dataset = "fashion_mnist"
    prompts = DATASET_PROMPTS[dataset].table().prompts  # dit10: one candidate per prompt row, its class label
    return version, [Image.fromarray(im).convert("RGB") for im in images], labels, list(prompts), 500, unseen


def rules():
    keys = list(GRID)
    return [dict(zip(keys, values)) for values in itertools.product(*(GRID[k] for k in keys))]


def rule_name(r: dict) -> str:
    eps = f", epsilon {r['epsilon']:g}" if r["epsilon"] is not None else ""
    return f"{r['variance']}, {r['spending']}, min {r['min_samples']}{eps}"


def model_source(version: str) -> Path:
    """The folder of a version id ('tiny', 'fashion', ...) or of a shipped model named by its folder ('fashion-dit')."""
    from diffusion_classifier.families import SD_VERSIONS

    from lib.fashion import MODELS_DIR

    return Path(SD_VERSIONS[version]) if version in SD_VERSIONS else MODELS_DIR / version


def model_digest(version: str) -> str:
    """A short digest of the model's weights (every .safetensors file in its folder)."""
    h = hashlib.sha1()
    for f in sorted(model_source(version).rglob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def make_evaluator(version: str, images, prompts: list[str], max_samples: int):
    """evaluate(jobs) over the images and candidates (the prompts, or a DiT's class labels: lib.scoring) with the
    noise bank of DiffusionClassifier.evaluator (max_samples draws, seed 0), l2."""
    from diffusion_classifier.classifier import preprocess
    from diffusion_classifier.engine import Scorer
    from diffusion_classifier.noise import make_noise

    from lib.scoring import model_and_conditions

    model, conds = model_and_conditions(model_source(version), prompts)
    latents = model.encode_images(preprocess(images, model.native_size))
    shape = tuple(latents.shape[1:])
    scorer = Scorer(model.denoiser, model.make_objective(shape), make_noise(max_samples, shape, 0), model.device,
                    model.dtype, 256)
    return lambda jobs: scorer.evaluate(latents, conds, jobs, "l2")


def run_set(name: str, limit: int | None = None) -> dict:
    from diffusion_classifier.schedules.statistical import statistical_classify

    version, images, labels, prompts, max_samples, unseen = make_set(name)
    images, labels = images[:limit], labels[:limit]
    evaluate = make_evaluator(version, images, prompts, max_samples)
    key = f"{version}|{model_digest(version)}|{name}|{len(images)}|{len(prompts)}|{max_samples}|l2"
    table = CACHE / "default_rule" / (f"{name}.pt" if limit is None else f"{name}_first{limit}.pt")  # a quick check
    lazy = LazyErrors(evaluate, len(images), len(prompts), max_samples, table, key)  # keeps the full table
    rows = []
    current_preds = None
    for r in [CURRENT] + [r for r in rules() if r != CURRENT]:
        t0 = time.time()
        res = statistical_classify(lazy, len(images), len(prompts), max_samples=max_samples, delta=DELTA, **r)
        cost = lazy.cost()
        preds = np.array([x.pred for x in res])
        if current_preds is None:
            current_preds = preds
        rows.append({**r, "rule": rule_name(r), "accuracy": 100.0 * float((preds == labels).mean()),
                     "evals_per_image": cost / len(images), "agree_with_current": int((preds == current_preds).sum()),
                     "seconds": time.time() - t0})
        row = rows[-1]
        print(f"{name}: {row['rule']:45s} {row['accuracy']:5.1f}%  {row['evals_per_image']:7.1f} evals/image "
              f"(computed so far {lazy.computed})", flush=True)
    lazy.save()
    return {"model": version, "images": len(images), "candidates": len(prompts), "max_samples": max_samples,
            "unseen": unseen, "rows": rows}


def choose(sets: dict, tolerance: float) -> dict:
    """The rule with the fewest evaluations (geometric mean over the sets of its ratio to the current rule) among
    those within `tolerance` points (per 100 images) of the current rule's accuracy on every set."""
    names = [r["rule"] for r in next(iter(sets.values()))["rows"]]
    table = []
    for i, rule in enumerate(names):
        ok, ratios = True, []
        for s in sets.values():
            row, base = s["rows"][i], s["rows"][0]
            ok &= row["accuracy"] >= base["accuracy"] - tolerance
            ratios.append(base["evals_per_image"] / row["evals_per_image"])
        table.append({"rule": rule, "within_tolerance": bool(ok),
                      "savings_geomean": math.exp(np.mean(np.log(ratios))), "savings": ratios})
    allowed = [t for t in table if t["within_tolerance"]]
    best = max(allowed, key=lambda t: t["savings_geomean"])
    settings = next(iter(sets.values()))["rows"][names.index(best["rule"])]
    return {"tolerance_points": tolerance, "chosen": best["rule"], "chosen_settings": settings,
            "table": sorted(table, key=lambda t: -t["savings_geomean"])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="accuracy points a rule may lose against the current rule")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each set (a quick check)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = {name: run_set(name, args.limit) for name in args.sets}
    out = {"delta": DELTA, "current": rule_name(CURRENT), "sets": sets, "choice": choose(sets, args.tolerance)}
    if args.limit is None:
        write_result(OUT, out, __file__, argv)
    print(json.dumps(out["choice"], indent=1)[:3000])
    return out


if __name__ == "__main__":
    main()
