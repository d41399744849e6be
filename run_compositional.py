"""Compositional image-text matching (SugarCrepe, ARO VG-Relation/VG-Attribution, What'sUp, GenEval-style folders,
a jsonl or a Hugging Face dataset of your own) with a diffusion model, CLIP or OpenCLIP: pick the true caption of
an image (text retrieval) or the true image of a caption (image retrieval)."""
from __future__ import annotations

import argparse
from pathlib import Path

from diffusion_classifier.cli import HelpFormatter, add_candidate_args, check_candidate_args
from diffusion_classifier.cli import positive_int, statistical_options
from diffusion_classifier.cli import run as run_cli
from diffusion_classifier.data.compositional import (
    LAYOUTS,
    read_aro,
    read_geneval,
    read_hf,
    read_jsonl,
    read_sugarcrepe,
    read_whatsup,
)
from diffusion_classifier.data.images import UnreadableImageError, found_before_message, unreadable_files
from diffusion_classifier.data.transforms import sd_transform
from diffusion_classifier.errors import MissingError
from diffusion_classifier.families import SD_VERSIONS
from diffusion_classifier.loading import default_dtype, model_numerics
from diffusion_classifier.loop import launch_state, shard
from diffusion_classifier.records import claim_run_folder, environment_info
from diffusion_classifier.runs import compositional_run
from diffusion_classifier.tasks.candidates import candidate_scoring, report_run, results_file
from diffusion_classifier.tasks.compositional import (
    accuracy_tables,
    clip_item_scorer,
    diffusion_item_scorer,
    run_items,
    summary_line,
    table_lines,
)

DEFAULT_VERSION = {"sd": "2-0", "clip": "ViT-L/14", "openclip": "ViT-H-14"}
DEFAULTS = {"to_keep": [1], "n_samples": [100], "loss": "l2"}  # every candidate on 100 timesteps
RESULT_FILE = "results.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", default="jsonl", choices=LAYOUTS,
                   help="the layout of --data_path (docs/compositional.md): jsonl (one item a line), hf (a local "
                        "Hugging Face dataset), sugarcrepe, vg_relation, vg_attribution, whatsup, geneval")
    p.add_argument("--data_path", type=Path, default=None,
                   help="the items: the jsonl or json file, SugarCrepe's split file or folder, the hf dataset, or "
                        "the GenEval-style folder")
    p.add_argument("--image_root", type=Path, default=None,
                   help="folder the items' image paths are relative to; not given: the file's folder "
                        "(sugarcrepe: required, COCO val2017)")
    p.add_argument("--split", default="test", help="--dataset hf: the split")
    p.add_argument("--image_column", default=None, help="--dataset hf: column of the image (or list of images); "
                                                        "not given: 'image' or 'images'")
    p.add_argument("--caption_column", nargs="+", default=None,
                   help="--dataset hf: column of the captions (a list, or one caption under a list of images), or "
                        "several columns of one caption each; not given: 'captions' or 'caption'")
    p.add_argument("--label_column", default=None,
                   help="--dataset hf: column of the true caption's (or image's) index; not given: 'label', else 0")
    p.add_argument("--task_column", default=None, help="--dataset hf: column naming each item's task; not given: 'task'")
    p.add_argument("--prompts_file", type=Path, default=None,
                   help="--dataset geneval: the candidate prompts; not given: DIR/zero_shot_prompts.json or "
                        "DIR/../prompts/zero_shot_prompts.json")
    p.add_argument("--domain", default="photo", help="--dataset geneval: the prompts' domain in the prompts file")
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N items")
    # scoring
    p.add_argument("--model", default="sd", choices=["sd", "clip", "openclip"], help="scorer: a diffusion model or CLIP")
    p.add_argument("--version", default=None,
                   help=f"model version; not given: {DEFAULT_VERSION}; sd: {', '.join(SD_VERSIONS)} ('tiny': the digits model)")
    p.add_argument("--model_path", default=None, help="a local model folder or hub id instead of --version")
    add_candidate_args(p, DEFAULTS, "items")
    return p.parse_args(argv)


def read_items(args):
    """The items of the chosen layout."""
    path = args.data_path
    if path is None:
        raise MissingError(f"--dataset {args.dataset} needs --data_path (docs/compositional.md)")
    readers = {
        "jsonl": lambda: read_jsonl(path, args.image_root),
        "hf": lambda: read_hf(path, args.split, args.image_column, args.caption_column, args.label_column,
                              args.task_column),
        "sugarcrepe": lambda: read_sugarcrepe(path, _given(args.image_root, "--image_root DIR (COCO val2017)")),
        "vg_relation": lambda: read_aro(path, args.image_root, "vg_relation"),
        "vg_attribution": lambda: read_aro(path, args.image_root, "vg_attribution"),
        "whatsup": lambda: read_whatsup(path, args.image_root),
        "geneval": lambda: read_geneval(path, args.prompts_file, args.domain),
    }
    return readers[args.dataset]()


def _given(value, flag: str):
    if value is None:
        raise MissingError(f"this dataset needs {flag}")
    return value


def data_settings(args) -> dict:
    """The manifest entries that pick the items: the files, and the layout's own flags."""
    own = {"hf": lambda: {"split": args.split, "columns": [args.image_column, args.caption_column,
                                                           args.label_column, args.task_column]},
           "geneval": lambda: {"prompts_file": None if args.prompts_file is None else str(args.prompts_file),
                               "domain": args.domain}}
    return {"data_path": str(args.data_path), "image_root": None if args.image_root is None else str(args.image_root),
            **own.get(args.dataset, dict)()}


def group_name(args) -> str:
    """<layout>_<file stem or folder name>, and the split of a Hugging Face dataset."""
    path = Path(args.data_path)
    split = {"hf": f"_{args.split}"}.get(args.dataset, "")
    return f"{args.dataset}_{path.name if path.is_dir() else path.stem}{split}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.version = args.version or DEFAULT_VERSION[args.model]
    check_candidate_args(args)

    items = read_items(args)[: args.limit]
    unreadable = unreadable_files((n, s.name) for n, it in enumerate(items) for s in it.images if s.read is None)
    if unreadable and not args.skip_unreadable:
        raise UnreadableImageError(unreadable[0].name, unreadable[0].found,
                                   found_before_message(unreadable, len({s.name for it in items for s in it.images})))
    gone = {b.name for b in unreadable}
    items = [it for it in items if not any(s.name in gone for s in it.images)]

    state, device = launch_state(args.device)
    dtype = default_dtype(args.dtype, device)
    items = shard(items, args.n_workers, args.worker_idx)[state.process_index :: state.num_processes]
    data = data_settings(args)
    common = dict(dataset=group_name(args), data=data, extra=args.extra, version=args.version,
                  model_path=args.model_path)
    if args.model == "sd":
        setup = candidate_scoring(args.version, args.model_path, device, dtype, args.attention, args.img_size,
                                  args.batch_size, args.schedule, args.to_keep, args.n_samples, args.n_trials,
                                  args.seed, args.noise_path, statistical_options(args), args.timestep_weights,
                                  args.loss)
        model = setup.model
        score_item = diffusion_item_scorer(model.encode_images, model.encode_prompts, setup.scorer,
                                           sd_transform(setup.img_size, args.interpolation), setup.schedule_for,
                                           args.loss, setup.weights)
        run = compositional_run(model="sd", source=setup.source, n_trials=args.n_trials, to_keep=args.to_keep,
                                n_samples=args.n_samples, loss=args.loss, schedule=args.schedule,
                                **statistical_options(args), img_size=setup.img_size, native_size=model.native_size,
                                interpolation=args.interpolation, timestep_weights=setup.weights_digest,
                                noise=setup.noise_source, **common)
        numerics = setup.numerics
    else:
        from diffusion_classifier.baselines import load_baseline

        source, score = load_baseline(args.model, args.version, args.model_path, device, dtype)
        score_item = clip_item_scorer(score)
        run = compositional_run(model=args.model, source=source, **common)
        numerics = model_numerics(source, dtype=str(dtype))
    folder = run.folder(args.log_dir)
    claim_run_folder(folder, run.manifest, {"versions": environment_info()}, state, numerics=numerics)

    stats = run_items(items, folder, score_item, desc=f"{args.dataset} {run.name}", show_progress=not args.no_progress,
                      skip_unreadable=args.skip_unreadable, unreadable=unreadable)
    results = results_file(folder, RESULT_FILE, args.n_workers, args.worker_idx, state.num_processes,
                           state.process_index)
    return report_run(folder, stats, [it.id for it in items], accuracy_tables, table_lines, summary_line, results,
                      "item")


if __name__ == "__main__":
    run_cli(main, unit="items")
