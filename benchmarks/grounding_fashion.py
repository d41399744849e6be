"""Referring expressions on Fashion-MNIST scenes: run_refcoco.py's accuracy (IoU > 0.5) and evaluations per
expression with the shipped fashion models, against raw errors and VGDiffZero's recipe.

Scenes: n items of distinct classes from the Fashion-MNIST test split on a black 64x64 canvas (20-32 px each),
one referred item per scene, the expression `the <class word>` (a caption wording the models were trained on),
written in the three layouts run_refcoco.py reads (lib/scenes.py).

    python benchmarks/grounding_fashion.py --n_scenes 150 --configs target raw layouts
    python benchmarks/grounding_fashion.py --n_scenes 100 --configs regions vgdiffzero items flow
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lib import CACHE, RESULTS, HelpFormatter, entry_script
from lib.results import write_result
from lib.scenes import make_scenes, write_hf, write_jsonl, write_refer

OUT = RESULTS / "grounding_fashion.json"


def scene_data(n_items: int, n_scenes: int, seed: int = 0) -> Path:
    """The scenes in the three layouts under benchmarks/cache/grounding/<n>items_<N>/ (written once)."""
    from diffusion_classifier.data.fashion_mnist import load_arrays
    from diffusion_classifier.data.prompts import DATASET_PROMPTS

    root = CACHE / "grounding" / f"{n_items}items_{n_scenes}_seed{seed}"
    if (root / "done").is_file():
        return root
    words = DATASET_PROMPTS["fashion_mnist"].prompt_names
    images, labels = load_arrays("test")
    scenes = make_scenes(images, labels, n_scenes, n_items, seed=seed)
    write_jsonl(root / "scenes.jsonl", root / "images" / "mscoco" / "images" / "train2014", scenes, words, "val")
    write_refer(root, "refcoco", "val", scenes, words)
    write_hf(root / "hf", "val", scenes, words, root / "proposals.json")
    (root / "done").write_text("")
    return root


def run(root: Path, *flags: str, layout: str = "reclip") -> dict:
    """run_refcoco.main on the scenes; its result and records."""
    images = root / "images" / "mscoco" / "images" / "train2014"
    data = {"reclip": ["--dataset", "reclip", "--data_path", str(root / "scenes.jsonl"), "--image_root", str(images)],
            "refer": ["--dataset", "refcoco", "--dataset_root", str(root)],
            "hf": ["--dataset", "hf", "--dataset_root", str(root / "hf"), "--proposals", str(root / "proposals.json")]}
    argv = [*data[layout], "--split", "val", "--log_dir", str(CACHE / "grounding" / "runs" / root.name / layout),
            "--no_progress", *flags]
    result = entry_script("run_refcoco").main(argv)
    return {"flags": " ".join(flags), "layout": layout, "accuracy": result["accuracy"], "n": result["n"],
            "evaluations_per_expression": result["evaluations_per_expression"], "line": result["line"]}


def records_of(line: str) -> dict:
    from diffusion_classifier.records import load_record

    folder = Path(line.split(": accuracy")[0])
    return {p.stem: load_record(p) for p in sorted(folder.glob("*.pt"))}


def same_records(a: dict, b: dict) -> bool:
    """Whether two runs chose the same box with the same errors for every query."""
    keys = ("qid", "pred", "iou", "hit", "candidates", "boxes", "gold_box", "scores")
    return a.keys() == b.keys() and all(all(a[q][k] == b[q][k] for k in keys) for q in a)


def vgdiffzero(root: Path, n_samples: int, version: str = "fashion", template: str = "a photo of {}",
               seed: int = 0) -> dict:
    """VGDiffZero's recipe: each box's crop and masked image scored against the template with raw errors, fresh
    noise per box (seeded here: each box its own draws), softmax over boxes of -error for each, summed; the box
    with the highest sum (the paper's lowest error) and, as its code does, the argmax over the errors."""
    from diffusion_classifier.data.refcoco import iou, read_jsonl
    from diffusion_classifier.data.transforms import sd_transform
    from diffusion_classifier.engine import Jobs, Scorer, cat_conditions
    from diffusion_classifier.families import load_model, resolve_model
    from diffusion_classifier.noise import make_noise
    from diffusion_classifier.schedules.staged import reference_stages
    from diffusion_classifier.tasks.grounding import region_views

    model = load_model(resolve_model(version), "cpu", torch.float32)
    shape = model.latent_shape(model.native_size)
    queries = read_jsonl(root / "scenes.jsonl", root / "images" / "mscoco" / "images" / "train2014")
    ts = torch.tensor([t for s in reference_stages([1], [n_samples], model.T) for t in s.timesteps])
    max_k = max(len(q.candidates) for q in queries)
    scorer = Scorer(model.denoiser, model.make_objective(shape), make_noise(2 * max_k * len(ts), shape, seed),
                    "cpu", torch.float32, 256)
    transform = sd_transform(model.native_size, "bicubic")
    hits = {"paper": 0, "code": 0}
    for q in queries:
        image = q.open_image()
        boxes = [b for _, b in q.candidates]
        views = region_views(image, boxes, "both")  # crop_k, mask_k
        latents = model.encode_images(torch.stack([transform(v) for v in views]))
        conds = cat_conditions([model.encode_prompts([template.format(q.expression)])])
        n = len(views)
        image_idx = torch.arange(n).repeat_interleave(len(ts))
        jobs = Jobs.build(image_idx, torch.zeros_like(image_idx), ts.repeat(n),
                          torch.arange(n * len(ts)))  # every view its own noise rows
        err = scorer.evaluate(latents, conds, jobs, "l2").reshape(len(boxes), 2, len(ts)).mean(-1)  # (K, 2)
        paper = (torch.softmax(-err[:, 0], 0) + torch.softmax(-err[:, 1], 0)).argmax()
        code = (torch.softmax(err[:, 0], 0) + torch.softmax(err[:, 1], 0)).argmax()
        hits["paper"] += iou(boxes[int(paper)], q.gold_box) > 0.5
        hits["code"] += iou(boxes[int(code)], q.gold_box) > 0.5
    n_q = len(queries)
    return {"accuracy_paper": 100.0 * hits["paper"] / n_q, "accuracy_code": 100.0 * hits["code"] / n_q, "n": n_q,
            "evaluations_per_expression": 2 * len(ts) * sum(len(q.candidates) for q in queries) / n_q,
            "template": template, "n_samples": n_samples}


def raw_choice_on_same_evaluations(records: dict) -> float:
    """Accuracy when the null-normalised run's own evaluations are ranked by their raw errors instead."""
    from diffusion_classifier.data.refcoco import iou

    hits = 0
    for r in records.values():
        means = [float(r["errors"][c]["cond_errors"].mean()) for c in range(len(r["candidates"]))]
        k = min(range(len(means)), key=means.__getitem__)
        hits += iou(r["boxes"][k], r["gold_box"]) > 0.5
    return 100.0 * hits / max(len(records), 1)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--n_scenes", type=int, default=150, help="scenes (= expressions) per set")
    p.add_argument("--configs", nargs="+", default=["target", "raw", "layouts"],
                   choices=["target", "raw", "layouts", "regions", "vgdiffzero", "items", "flow"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict = {}
    base = ["--version", "fashion", "--template", "{}"]
    root = scene_data(3, args.n_scenes)
    # the scenes these entries were measured on (a later run with another --n_scenes writes its own entries)
    out[f"set_{args.n_scenes}"] = {"scenes": args.n_scenes, "items": 3, "canvas": 64, "item_px": [20, 32],
                                   "chance": 100 / 3, "configs": args.configs}
    if "target" in args.configs:
        target = run(root, *base)
        target["raw_choice_on_same_evaluations"] = raw_choice_on_same_evaluations(records_of(target["line"]))
        out["target"] = target
    if "raw" in args.configs:
        out["raw"] = run(root, *base, "--score", "raw")
        out["raw_same_budget"] = run(root, *base, "--score", "raw", "--n_samples", "120")
    if "layouts" in args.configs:
        refer, jsonl = run(root, *base, layout="refer"), run(root, *base)  # finished runs are read back, not recomputed
        hf = run(root, *base, layout="hf")
        out["layouts"] = {"refer": refer, "hf": hf,
                          "refer_records_equal_jsonl": same_records(records_of(refer["line"]),
                                                                    records_of(jsonl["line"]))}
    if "regions" in args.configs:
        out["regions"] = [run(root, *base, "--region", region, "--score", score)
                          for region in ("crop", "mask", "both") for score in ("null", "raw")]
    if "vgdiffzero" in args.configs:
        out["vgdiffzero"] = vgdiffzero(root, 60)
    if "flow" in args.configs:
        out["flow"] = [run(root, "--version", "fashion-flow", "--template", "{}", "--score", score)
                       for score in ("null", "raw")]
    if "items" in args.configs:
        out["items"] = [dict(run(scene_data(n, args.n_scenes), *base), items=n) for n in (2, 3, 4, 5)]
    write_result(OUT, out, __file__, argv, merge=True)  # entries of the other --configs runs are kept
    print(json.dumps({k: v for k, v in out.items()}, indent=1, default=str)[:4000])
    return out


if __name__ == "__main__":
    main()
