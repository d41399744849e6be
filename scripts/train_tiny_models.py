#!/usr/bin/env python3
"""Train the toolkit's tiny pixel-space diffusion models on the digits train split.

`digits-sd` is a text-conditioned UNet2DConditionModel + CLIPTextModel in the Stable Diffusion
pipeline layout (`sd-v`: the same trained with v targets); `digits-dit` is a class-conditional
DiTTransformer2DModel with learned variance in the DiT pipeline layout; `tiny-flow` is a rectified-flow
SD3Transformer2DModel with two CLIP text encoders in the Stable Diffusion 3 layout. All denoise 8x8 RGB
images in [-1, 1] directly (no VAE), so the loaders that read those layouts read them too. CPU, seeded.
Each kind's training lives in `diffusion_classifier/training/<kind>.py`; this script only parses flags.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the script runs from any working directory

from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.training import dit, flow, sd  # noqa: E402
from diffusion_classifier.training.common import (  # noqa: E402,F401 - the names tests and notebooks use
    CAPTION_DROP, NUM_CLASSES, TEMPLATES, build_tokenizer, captions_for, train_images, validation_split)
from diffusion_classifier.training.ddpm import BETA_RANGES  # noqa: E402
from diffusion_classifier.training.dit import dit_accuracy, train_dit, write_dit_card  # noqa: E402,F401
from diffusion_classifier.training.flow import train_flow, write_flow_card  # noqa: E402,F401
from diffusion_classifier.training.sd import train_sd, write_sd_card  # noqa: E402,F401

DEFAULT_OUT = REPO / "diffusion_classifier" / "tiny_models"
SD_DEFAULTS, DIT_DEFAULTS, FLOW_DEFAULTS = sd.DEFAULTS, dit.DEFAULTS, flow.DEFAULTS
# kind -> (output folder, committed settings, train function, card writer, fixed keyword arguments)
KINDS = {
    "sd": ("digits-sd", SD_DEFAULTS, train_sd, write_sd_card, {}),
    "sd-v": ("digits-sd-v", SD_DEFAULTS, train_sd, write_sd_card, {"prediction_type": "v_prediction"}),
    "dit": ("digits-dit", DIT_DEFAULTS, train_dit, write_dit_card, {}),
    "flow": ("tiny-flow", FLOW_DEFAULTS, train_flow, write_flow_card, {}),
}
GROUPS = {"both": ("sd", "dit"), "all": ("sd", "dit", "flow")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", choices=[*KINDS, *GROUPS], default="both",
                        help="which model to train (both = sd and dit, the shipped DDPM models; all = sd, dit and flow)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: each model's committed setting)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: each model's committed setting)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: each model's committed setting)")
    parser.add_argument("--beta-schedule", choices=sorted(BETA_RANGES), default=None, help="DDPM beta schedule (sd, sd-v, dit; default: each model's committed setting)")
    parser.add_argument("--shift", type=float, default=None, help=f"flow: the flow scheduler's shift (default {FLOW_DEFAULTS['shift']})")
    for k in dit.ARCH:
        parser.add_argument(f"--{k.replace('_', '-')}", type=int, default=None,
                            help=f"dit/flow: transformer {k.replace('_', ' ')} (default: dit {DIT_DEFAULTS[k]}, flow {FLOW_DEFAULTS[k]})")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches, noise and augmentation")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (results are reproducible for a fixed count)")
    parser.add_argument("--device", default="cpu", help="device of the DiT's training (the committed weights were trained on cpu)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder that receives digits-sd/, digits-dit/, ...")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="DiT model selection: train on the rest of the train split and report the top-1 on this "
                             "stratified fraction of it (seed 1); needs --model dit and an --out other than the shipped folder")
    args = parser.parse_args(argv)
    if args.val_fraction:
        if args.model != "dit":
            parser.error(f"--val-fraction is implemented for --model dit, got --model {args.model}")
        if args.out.resolve() == DEFAULT_OUT.resolve():
            parser.error(f"--val-fraction trains on part of the split: give an --out other than the shipped {DEFAULT_OUT}")
        if not 0 < args.val_fraction < 1:
            parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    torch.set_num_threads(args.threads)

    for which in GROUPS.get(args.model, (args.model,)):
        name, defaults, train, card, fixed = KINDS[which]
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        settings = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()
                    if k not in ("steps", "batch", "lr")}
        if which == "dit":
            settings["device"] = args.device
        val = None
        if args.val_fraction:
            fit, val = validation_split(*train_images(), args.val_fraction)
            settings["images"] = fit
        stats = train(out, steps=args.steps or defaults["steps"], batch=args.batch or defaults["batch"],
                      lr=args.lr or defaults["lr"], seed=args.seed, **settings, **fixed)
        if val is not None:
            from diffusers import DiTTransformer2DModel

            model = DiTTransformer2DModel.from_pretrained(out / "transformer").to(args.device)
            stats["val_fraction"] = args.val_fraction
            stats["val_top1"] = dit_accuracy(model, *val, stats["beta_schedule"])
        stats["threads"] = args.threads
        card(out, stats)
        print(json.dumps({name: stats}, indent=1))


if __name__ == "__main__":
    run_cli(main)
