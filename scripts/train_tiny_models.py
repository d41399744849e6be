#!/usr/bin/env python3
"""Train the toolkit's tiny pixel-space diffusion models on the digits or Fashion-MNIST train split.

`--model sd` is a text-conditioned UNet2DConditionModel + CLIPTextModel in the Stable Diffusion pipeline layout
(`sd-v`: the same trained with v targets); `dit` is a class-conditional DiTTransformer2DModel with learned
variance in the DiT pipeline layout; `flow` is a rectified-flow SD3Transformer2DModel with two CLIP text
encoders in the Stable Diffusion 3 layout. All denoise RGB images in [-1, 1] directly (no VAE), so the loaders
that read those layouts read them too. `clip` (--data fashion_pairs) is the contrastive baseline: a tiny CLIPModel
trained with CLIP's objective on the same data, saved as a transformers CLIP folder (run_compositional.py --model
clip). CPU, seeded. Long runs save a checkpoint every few minutes and on
SIGINT/SIGTERM; `--resume` continues exactly where one stopped. Each kind's training lives in
`diffusion_classifier/training/<kind>.py` (clip: `contrastive.py`); this script only parses flags.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the script runs from any working directory

from diffusion_classifier.cli import (fraction, int_in, non_negative_float, non_negative_int,  # noqa: E402
                                     positive_float, positive_int, seed_int)
from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.errors import InputError  # noqa: E402
from diffusion_classifier.interrupts import Interrupted  # noqa: E402
from diffusion_classifier.records import check_writable, write_json  # noqa: E402
from diffusion_classifier.training import contrastive, dit, flow, sd  # noqa: E402
from diffusion_classifier.training.common import (HELDOUT_FILE, HOLDOUT_SEED, Checkpointing,  # noqa: E402
                                                    TrainingPaused, holdout_split, train_images, validation_split)
from diffusion_classifier.training.data import DATA_NAMES, training_data  # noqa: E402
from diffusion_classifier.training.ddpm import BETA_RANGES  # noqa: E402

DEFAULT_OUT = REPO / "diffusion_classifier" / "tiny_models"
DEFAULT_CHECKPOINTS = REPO / "checkpoints"
# kind -> (module with DATA_DEFAULTS, train function, card writer, fixed keyword arguments)
KINDS = {
    "sd": (sd, sd.train_sd, sd.write_sd_card, {}),
    "sd-v": (sd, sd.train_sd, sd.write_sd_card, {"prediction_type": "v_prediction"}),
    "sd-flow": (sd, sd.train_sd, sd.write_sd_card, {"prediction_type": "flow"}),
    "dit": (dit, dit.train_dit, dit.write_dit_card, {}),
    "flow": (flow, flow.train_flow, flow.write_flow_card, {}),
    "clip": (contrastive, contrastive.train_clip, contrastive.write_clip_card, {}),
}
GROUPS = {"both": ("sd", "dit"), "all": ("sd", "dit", "flow")}
ARCH_FLAGS = ("patch", "heads", "head_dim", "layers")
WARM_KINDS = ("sd", "sd-v", "sd-flow")  # the kinds whose training can go on from a saved folder (--init)
NOT_TAKEN = {"sd-flow": ("beta_schedule",)}  # settings of a kind's module that the kind does not use (flow: no β)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", choices=DATA_NAMES, default="digits", help="training data (its train split)")
    parser.add_argument("--model", choices=[*KINDS, *GROUPS], default="both",
                        help="which model to train (both = sd and dit, the shipped DDPM models; all = sd, dit and flow)")
    parser.add_argument("--steps", type=positive_int, default=None, help="optimizer steps; not given: each model's committed setting")
    parser.add_argument("--batch", type=positive_int, default=None, help="batch size; not given: each model's committed setting")
    parser.add_argument("--lr", type=positive_float, default=None, help="peak learning rate; not given: each model's committed setting")
    parser.add_argument("--beta-schedule", choices=sorted(BETA_RANGES), default=None,
                        help="DDPM beta schedule (sd, sd-v, dit); not given: each model's committed setting")
    parser.add_argument("--shift", type=positive_float, default=None, help="flow: the flow scheduler's shift; not given: the committed setting")
    parser.add_argument("--channels", type=positive_int, nargs="+", default=None,
                        help="sd/sd-v: the UNet's block_out_channels, one level each, cross-attention at the last; "
                             "not given: the committed setting")
    for k in ARCH_FLAGS:
        parser.add_argument(f"--{k.replace('_', '-')}", type=positive_int, default=None,
                            help=f"dit/flow/clip (its ViT): transformer {k.replace('_', ' ')}; not given: the committed setting")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of initialisation, batches, noise and augmentation")
    parser.add_argument("--threads", type=int_in(1, 2**31 - 1), default=1,
                        help="CPU threads (results are reproducible for a fixed count)")
    parser.add_argument("--device", default="cpu", help="device of the DiT's training (the committed weights were trained on cpu)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder that receives digits-sd/, fashion-dit/, ...")
    parser.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINTS,
                        help="folder of the training checkpoints (<model folder name>.pt; removed when a model is saved)")
    parser.add_argument("--checkpoint-every", type=non_negative_float, default=5.0,
                        help="minutes between checkpoints (0: after every step)")
    parser.add_argument("--resume", action="store_true", help="continue from the model's checkpoint, exactly where it stopped")
    parser.add_argument("--time-limit", type=non_negative_float, default=None,
                        help="minutes of training in this run after which it saves a checkpoint and stops (continue with "
                             "--resume); checked after each step, so 0 stops after the first; not given: no limit")
    parser.add_argument("--stop-at", type=positive_int, default=None, help="save a checkpoint and stop after this many steps")
    parser.add_argument("--val-fraction", type=fraction, default=0.0,
                        help="DiT model selection: train on the rest of the train split and report the top-1 on this "
                             "stratified fraction of it (seed 1), in [0, 1) (0: none); needs --model dit and an --out "
                             "other than the shipped folder")
    parser.add_argument("--holdout", type=non_negative_int, default=0, metavar="PER_CLASS",
                        help="hold out PER_CLASS images of every class of the train split (seeded, stratified) and never "
                             "train on them; their indices go to the model folder's heldout_train.json, for fitting "
                             "timestep weights and a temperature on labelled images the model has not seen (0: none)")
    parser.add_argument("--init", type=Path, default=None, metavar="FOLDER",
                        help="sd/sd-v: go on training from the weights of this model folder (one this script wrote, of "
                             "the same architecture and --holdout), with a new warmup and cosine schedule over --steps; "
                             "its card and training.json keep the earlier stages (not given: start from scratch)")
    args = parser.parse_args(argv)  # each flag's range is checked here; the checks below need several flags
    data = training_data(args.data)
    missing = [k for k in GROUPS.get(args.model, (args.model,)) if k not in data.folders]
    if missing:
        parser.error(f"--data {args.data} trains {', '.join(data.folders)} (no {', '.join(missing)}); got --model {args.model}")
    kinds = GROUPS.get(args.model, (args.model,))
    def takes(kind: str) -> set:
        return set(KINDS[kind][0].DATA_DEFAULTS.get(args.data, {})) - set(NOT_TAKEN.get(kind, ()))

    taken = {k for kind in kinds for k in takes(kind)}  # the settings these kinds have
    unused = [k for k in ("beta_schedule", "shift", "channels", *ARCH_FLAGS) if getattr(args, k) is not None
              and k not in taken]
    if unused:
        takers = [kind for kind in KINDS if unused[0] in takes(kind)]
        parser.error(f"--{unused[0].replace('_', '-')} is a setting of --model {' or '.join(takers) or 'none'} "
                     f"(--data {args.data}); got --model {args.model}")
    if args.init is not None and args.model not in WARM_KINDS:
        parser.error(f"--init is implemented for --model {' or '.join(WARM_KINDS)}, got --model {args.model}")
    if args.holdout and args.val_fraction:
        parser.error("--holdout and --val-fraction both hold images out; pass one")
    if args.val_fraction:
        if args.model != "dit":
            parser.error(f"--val-fraction is implemented for --model dit, got --model {args.model}")
        if args.out.resolve() == DEFAULT_OUT.resolve():
            parser.error(f"--val-fraction trains on part of the split: give an --out other than the shipped {DEFAULT_OUT}")
    return args


def settings_for(args, module, which: str) -> dict:
    """The kind's settings: its committed ones for the data, overridden by the flags given."""
    defaults = module.DATA_DEFAULTS[args.data]
    settings = {}
    for k, v in defaults.items():
        given = getattr(args, k)
        settings[k] = tuple(given) if k == "channels" and given else (given if given is not None else v)
    if which == "dit":
        settings["device"] = args.device
    return settings


def main(argv=None) -> None:
    args = parse_args(argv)
    check_writable(args.out, "--out")  # a file in the way fails before any training
    check_writable(args.checkpoint_dir, "--checkpoint-dir")
    torch.set_num_threads(args.threads)
    data = training_data(args.data)
    images, val, held = train_images(data), None, None  # read once for every kind trained
    if args.holdout:
        images, held = holdout_split(*images, args.holdout, HOLDOUT_SEED)
    if args.val_fraction:
        images, val = validation_split(*images, args.val_fraction)
    for which in GROUPS.get(args.model, (args.model,)):
        module, train, card, fixed = KINDS[which]
        name = data.folders[which]
        out = args.out / name
        settings = settings_for(args, module, which)
        path = args.checkpoint_dir / f"{name}.pt"
        if path.is_file() and not args.resume:
            raise InputError(f"a training checkpoint of {name} exists at {path}: pass --resume to continue it, "
                             f"or delete it to start over")
        if args.resume and not path.is_file():
            print(f"{name}: no checkpoint at {path}; starting from step 0", flush=True)
        identity = {"data": data.name, "model": which, **settings, **fixed, "n_train": len(images[1]),
                    **({"holdout_per_class": args.holdout} if held else {}),
                    **({"init": str(args.init.resolve())} if args.init is not None else {})}
        identity = {k: list(v) if isinstance(v, tuple) else v for k, v in identity.items()}
        ckpt = Checkpointing(path=path, settings=identity, resume=args.resume, every_s=60 * args.checkpoint_every,
                             stop_at=args.stop_at,
                             time_limit_s=None if args.time_limit is None else 60 * args.time_limit)  # 0 is a limit
        out.mkdir(parents=True, exist_ok=True)
        try:
            warm = {"init": args.init, "held": held} if args.init is not None else {}
            stats = train(out, images=images, data=data, checkpoint=ckpt, seed=args.seed, **settings, **fixed, **warm)
        except TrainingPaused as p:
            print(f"{name}: paused at step {p.step}/{p.steps}, checkpoint {p.path}; run the same command with --resume "
                  f"to continue", flush=True)
            return
        except Interrupted as e:  # fit saved the checkpoint after the step under way
            saved = (f"{name}'s checkpoint {path} is saved; run the same command with --resume to continue"
                     if path.is_file() else f"{name} stopped before its first step; nothing to resume")
            print(f"interrupted by {e}: {saved}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
        if val is not None:
            from diffusers import DiTTransformer2DModel

            model = DiTTransformer2DModel.from_pretrained(out / "transformer").to(args.device)
            stats["val_fraction"] = args.val_fraction
            stats["val_top1"] = dit.dit_accuracy(model, *val, stats["beta_schedule"])
        stats["threads"] = args.threads
        if held:
            stats["holdout_per_class"] = args.holdout
            write_json(out / HELDOUT_FILE, {"data": data.name, "split": "train", "per_class": args.holdout,
                                            "seed": HOLDOUT_SEED, "indices": held})
        card(out, stats)
        (out / "training.json").write_text(json.dumps(stats, indent=1) + "\n")
        path.unlink(missing_ok=True)
        print(json.dumps({name: stats}, indent=1))


if __name__ == "__main__":
    run_cli(main)
