"""Accuracy of the shipped tiny models on the whole digits test split, against a discriminative baseline.

Rows: (a) the text-conditional model with a paper-style adaptive schedule, (b) the same model scoring
every class at every sampled timestep, (c) the class-conditional DiT (all classes, evenly spaced
timesteps), (d) logistic regression on pixels, (e, f) the flow-matching tiny-flow (SD3 layout) with the
schedules of (a) and (b), and with --sd_v PATH (g, h) a v-prediction digits-sd trained by
`scripts/train_tiny_models.py --model sd-v` with the same schedules. Prints a markdown table; --json
writes the numbers, merged into the file's rows of other models.

    python benchmarks/digits_accuracy.py --json benchmarks/results/digits_accuracy.json
    python benchmarks/digits_accuracy.py --only flow sd_v --sd_v DIR --json benchmarks/results/digits_accuracy.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lib import ROOT, HelpFormatter
from lib.digits import describe, digits_test, markdown_table, run
from lib.results import write_result

from diffusion_classifier.data.digits import load_digits_arrays
from diffusion_classifier.data.prompts import read_prompts
from diffusion_classifier.families import SD_VERSIONS, load_model
from diffusion_classifier.families.dit import DIT_MODELS, load_class_conditional
from diffusion_classifier.families.sd import load_text_conditional


def logistic_regression() -> dict:
    from sklearn.linear_model import LogisticRegression

    xtr, ytr = load_digits_arrays("train")
    xte, yte = load_digits_arrays("test")
    start = time.perf_counter()
    clf = LogisticRegression(max_iter=5000).fit(xtr.reshape(len(xtr), -1) / 255.0, ytr)
    fit = time.perf_counter() - start
    start = time.perf_counter()
    acc = 100.0 * (clf.predict(xte.reshape(len(xte), -1) / 255.0) == yte).mean()
    return {"accuracy": acc, "evals_per_image": 0, "seconds_per_image": (time.perf_counter() - start) / len(yte),
            "fit_seconds": fit, "n_images": len(yte)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--adaptive", nargs=2, default=["5 1", "10 50"], metavar=("TO_KEEP", "N_SAMPLES"),
                   help="the adaptive schedule of row (a), as quoted lists")
    p.add_argument("--full_samples", type=int, default=50, help="timesteps of the no-pruning rows (b) and (c)")
    p.add_argument("--loss", default="l2", choices=["l2", "l1", "huber"], help="error of the text model")
    p.add_argument("--batch_size", type=int, default=500, help="denoiser evaluations per batch")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--json", type=Path, default=None, help="merge the results into this JSON file")
    p.add_argument("--sd_v", type=Path, default=None, help="a v-prediction digits-sd folder (rows g, h)")
    p.add_argument("--flow_grid", default="timesteps", help="σ grid of tiny-flow's rows")
    p.add_argument("--only", nargs="+", default=None, choices=["sd", "dit", "logreg", "flow", "sd_v"],
                   help="only these models' rows")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    rows = []
    wanted = set(args.only or ["sd", "dit", "logreg", "flow"] + (["sd_v"] if args.sd_v else []))
    table = read_prompts(ROOT / "prompts" / "digits_prompts.csv")
    adaptive = {"to_keep": [int(v) for v in args.adaptive[0].split()], "n_samples": [int(v) for v in args.adaptive[1].split()]}
    full = {"to_keep": [1], "n_samples": [args.full_samples]}

    def text_rows(model, tags, **kw):
        conds = model.encode_prompts(table.prompts)
        latents, labels = digits_test(model, args.limit)
        for tag, spec in zip(tags, (adaptive, full)):
            r = run(model, conds, table.classidx, latents, labels, spec, args.batch_size, args.seed, args.loss, **kw)
            rows.append((f"{tag}: {describe(spec)}", r))
            print(rows[-1][0], r, flush=True)

    if "sd" in wanted:
        text_rows(load_text_conditional(SD_VERSIONS["tiny"]), ("(a) text model, adaptive", "(b) text model, no pruning"))
    if "dit" in wanted:
        dit = load_class_conditional(DIT_MODELS["tiny"])
        latents, labels = digits_test(dit, args.limit)
        r = run(dit, torch.arange(dit.num_classes), list(range(dit.num_classes)), latents, labels, full, args.batch_size, args.seed)
        rows.append((f"(c) DiT: {describe(full)}", r))
        print(rows[-1][0], r, flush=True)
    if "logreg" in wanted:
        r = logistic_regression()
        rows.append(("(d) logistic regression on pixels", r))
        print(rows[-1][0], r, flush=True)
    if "flow" in wanted:
        text_rows(load_model(SD_VERSIONS["tiny-flow"]), ("(e) tiny-flow, adaptive", "(f) tiny-flow, no pruning"),
                  flow_grid=args.flow_grid)
    if "sd_v" in wanted:
        if args.sd_v is None:
            p.error("--only sd_v needs --sd_v PATH")
        text_rows(load_model(str(args.sd_v)), ("(g) v-prediction text model, adaptive", "(h) v-prediction text model, no pruning"))

    print()
    print(markdown_table(rows))
    if args.json:  # merged into the file's earlier rows, so a run of some models keeps the others' numbers
        write_result(args.json, {name: r for name, r in rows}, __file__, argv, merge=True)
    return rows


if __name__ == "__main__":
    main()
