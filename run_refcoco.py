"""Referring expression comprehension (RefCOCO, RefCOCO+, RefCOCOg) with a diffusion model, CLIP or OpenCLIP:
pick the candidate box an expression names; a hit is IoU(chosen, gold) > 0.5."""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path


from diffusion_classifier.cli import HelpFormatter, add_candidate_args, check_candidate_args
from diffusion_classifier.cli import positive_int, statistical_options
from diffusion_classifier.cli import run as run_cli
from diffusion_classifier.data.images import UnreadableImageError, found_before_message, unreadable_files
from diffusion_classifier.data.refcoco import SPLIT_BY, read_hf, read_jsonl, read_proposals, read_refer
from diffusion_classifier.data.sizes import image_hw
from diffusion_classifier.data.transforms import sd_transform
from diffusion_classifier.errors import InputError, MissingError
from diffusion_classifier.families import SD_VERSIONS
from diffusion_classifier.loading import default_dtype, model_numerics
from diffusion_classifier.loop import launch_state, shard
from diffusion_classifier.records import claim_run_folder, environment_info
from diffusion_classifier.runs import grounding_run
from diffusion_classifier.tasks.candidates import candidate_scoring, report_run, results_file
from diffusion_classifier.tasks.grounding import (
    REGIONS,
    SCORES,
    accuracy_tables,
    clip_query_scorer,
    diffusion_query_scorer,
    run_queries,
    summary_line,
    table_lines,
)

DATASETS = ("refcoco", "refcoco+", "refcocog", "reclip", "hf")
DEFAULT_VERSION = {"sd": "2-1", "clip": "ViT-L/14", "openclip": "ViT-H-14"}
DEFAULTS = {"region": "crop", "score": "null", "to_keep": [1], "n_samples": [60], "loss": "l1"}  # measured: docs/grounding.md
RESULT_FILE = "results.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", default="refcoco", choices=DATASETS,
                   help="refcoco/refcoco+/refcocog: the refer release at --dataset_root; reclip: the jsonl at "
                        "--data_path; hf: a local Hugging Face dataset at --dataset_root")
    p.add_argument("--split", default="val", help="val, testA, testB (refcoco, refcoco+), test (refcocog), or any split the data has")
    p.add_argument("--split_by", default=None, help=f"the refer release's partition; not given: {SPLIT_BY}")
    p.add_argument("--dataset_root", type=Path, default=Path(os.environ.get("DATASET_ROOT", "datasets")),
                   help="the refer release's folder (DIR/refcoco/refs(unc).p, DIR/refcoco/instances.json), or the hf dataset (env DATASET_ROOT)")
    p.add_argument("--data_path", type=Path, default=None, help="--dataset reclip: the jsonl file, one referred object a line")
    p.add_argument("--image_root", type=Path, default=None,
                   help="folder of the images; not given: DATASET_ROOT/images/mscoco/images/train2014")
    p.add_argument("--proposals", default="gt",
                   help="candidates: gt (the image's annotated objects) or a JSON file {image_id: [[x, y, w, h], ...]}")
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N expressions")
    # scoring
    p.add_argument("--model", default="sd", choices=["sd", "clip", "openclip"], help="scorer: a diffusion model or CLIP")
    p.add_argument("--version", default=None,
                   help=f"model version; not given: {DEFAULT_VERSION}; sd: {', '.join(SD_VERSIONS)} ('fashion': fashion-sd, 'tiny': the digits model)")
    p.add_argument("--model_path", default=None, help="a local model folder or hub id instead of --version")
    p.add_argument("--region", default=DEFAULTS["region"], choices=REGIONS,
                   help="what a candidate is scored as: its crop padded to a square, the image masked to it, or both")
    p.add_argument("--template", default="a photo of {}", help="the prompt; {} is the expression")
    p.add_argument("--score", default=DEFAULTS["score"], choices=SCORES,
                   help="null: each region's error minus its error under the empty prompt on the same (t, ε), "
                        "comparable across regions; raw: the error as it stands")
    add_candidate_args(p, DEFAULTS, "expressions")
    return p.parse_args(argv)


def read_queries(args, proposals):
    """The queries of the chosen layout and split."""
    readers = {
        "reclip": lambda: read_jsonl(_given(args.data_path, "--data_path FILE.jsonl"),
                                     _given(args.image_root, "--image_root DIR"), proposals, args.split),
        "hf": lambda: read_hf(args.dataset_root, args.split, args.image_root, proposals),
    }
    refer = lambda: read_refer(args.dataset_root, args.dataset, args.split, args.split_by, args.image_root, proposals)
    return readers.get(args.dataset, refer)()


def _given(value, flag: str):
    if value is None:
        raise MissingError(f"this dataset needs {flag}")
    return value


def data_settings(args) -> dict:
    """The manifest entries that pick the queries."""
    if args.dataset in SPLIT_BY:
        return {"root": str(args.dataset_root), "split_by": args.split_by or SPLIT_BY[args.dataset]}
    if args.data_path is not None and args.dataset == "reclip":
        return {"data_path": str(args.data_path)}
    return {"root": str(args.dataset_root)}


def group_name(args) -> str:
    stems = {"reclip": lambda: f"reclip_{Path(args.data_path).stem}",
             "hf": lambda: f"hf_{Path(args.dataset_root).name}"}
    return stems.get(args.dataset, lambda: args.dataset)()


def file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.version = args.version or DEFAULT_VERSION[args.model]
    check_candidate_args(args)
    try:
        args.template.format("x")
    except (IndexError, KeyError, ValueError) as e:
        raise InputError(f"--template {args.template!r} cannot be filled ({e}); expected one {{}} for the expression") from None

    proposals = None if args.proposals == "gt" else read_proposals(args.proposals)
    queries = read_queries(args, proposals)[: args.limit]
    unreadable = unreadable_files((n, q.image) for n, q in enumerate(queries) if q.read is None)
    if unreadable and not args.skip_unreadable:
        raise UnreadableImageError(unreadable[0].name, unreadable[0].found,
                                   found_before_message(unreadable, len({q.image for q in queries}), "images"))
    gone = {b.name for b in unreadable}
    queries = [q for q in queries if q.image not in gone]

    state, device = launch_state(args.device)
    dtype = default_dtype(args.dtype, device)
    queries = shard(queries, args.n_workers, args.worker_idx)[state.process_index :: state.num_processes]
    common = dict(dataset=group_name(args), data=data_settings(args), split=args.split,
                  proposals="gt" if proposals is None else file_digest(args.proposals), template=args.template,
                  extra=args.extra, version=args.version, model_path=args.model_path)
    if args.model == "sd":
        setup = candidate_scoring(args.version, args.model_path, device, dtype, args.attention, args.img_size,
                                  args.batch_size, args.schedule, args.to_keep, args.n_samples, args.n_trials,
                                  args.seed, args.noise_path, statistical_options(args), args.timestep_weights,
                                  args.loss)
        model = setup.model
        score_query = diffusion_query_scorer(model.encode_images, model.encode_prompts, setup.scorer,
                                             sd_transform(setup.img_size, args.interpolation), setup.schedule_for,
                                             args.region, args.template, args.score == "null", args.loss,
                                             weights=setup.weights, aspect=image_hw(setup.img_size))
        run = grounding_run(model="sd", source=setup.source, region=args.region, score=args.score,
                            n_trials=args.n_trials, to_keep=args.to_keep, n_samples=args.n_samples, loss=args.loss,
                            schedule=args.schedule, **statistical_options(args), img_size=setup.img_size,
                            native_size=model.native_size, interpolation=args.interpolation,
                            timestep_weights=setup.weights_digest, noise=setup.noise_source, **common)
        numerics = setup.numerics
    else:
        from diffusion_classifier.baselines import load_baseline

        source, score = load_baseline(args.model, args.version, args.model_path, device, dtype)
        score_query = clip_query_scorer(score, args.template)
        run = grounding_run(model=args.model, source=source, **common)
        numerics = model_numerics(source, dtype=str(dtype))
    folder = run.folder(args.log_dir)
    claim_run_folder(folder, run.manifest, {"versions": environment_info()}, state, numerics=numerics)

    stats = run_queries(queries, folder, score_query, desc=f"{args.dataset} {args.split} {run.name}",
                        show_progress=not args.no_progress, skip_unreadable=args.skip_unreadable,
                        unreadable=unreadable)
    results = results_file(folder, RESULT_FILE, args.n_workers, args.worker_idx, state.num_processes,
                           state.process_index)
    return report_run(folder, stats, [q.qid for q in queries], accuracy_tables, table_lines, summary_line, results,
                      "expression")


if __name__ == "__main__":
    run_cli(main, unit="expressions")
