"""fashion-pairs-clip: a tiny CLIP (transformers CLIPModel: ViT image tower, text transformer with our own tokenizer)
trained from scratch with CLIP's symmetric InfoNCE objective on the same training data as the diffusion models, and
saved as a transformers CLIP folder with its processor, so `baselines.load_clip` (run_compositional.py --model clip
--model_path FOLDER) scores it like any CLIP."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError
from .cards import card_data_line, retrain_command
from .common import (MAX_LENGTH, Checkpointing, build_tokenizer, count_params, draw_batch, folder_size, to_rgb,
                     train_images, train_loop)
from .data import TrainingData, training_data

# Committed settings per training data: `patch`, `heads`, `head_dim`, `layers` are the ViT's (width heads * head_dim).
# 2500 steps of batch 256 take about 13 minutes on two free CPU threads (0.32 s a step measured), under the ~50
# minutes of the diffusion model of the same data (fashion-pairs), so compute does not favour the contrastive model.
DATA_DEFAULTS = {
    "fashion_pairs": dict(steps=2500, batch=256, lr=1e-3, patch=7, heads=4, head_dim=16, layers=4),
}
ARCH = ("patch", "heads", "head_dim", "layers")
TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4)  # as sd.build_sd's
PROJECTION_DIM = 64
LOGIT_SCALE_INIT = math.log(1 / 0.07)  # 2.6592, CLIP's initial temperature 0.07
LOGIT_SCALE_MAX = math.log(100.0)  # CLIP clips the logit scale at 100
MEAN = STD = (0.5, 0.5, 0.5)  # pixel values x / 127.5 - 1, as the diffusion models see them


def image_side(data: TrainingData) -> int:
    """The square input side of the image tower: the image's longer side (28x56 pairs -> 56)."""
    return max(data.shape)


def image_processor(side: int):
    """The CLIPImageProcessor saved with the model: RGB, resized to side x side by nearest neighbour (a 28x56 pair's
    rows doubled exactly, no centre crop, so both halves stay whole), x / 255 normalised with mean = std = 0.5."""
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    return CLIPImageProcessor(
        do_convert_rgb=True, do_resize=True, size={"height": side, "width": side}, resample=PILImageResampling.NEAREST,
        do_center_crop=False, crop_size={"height": side, "width": side}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(MEAN), image_std=list(STD),
    )


def pixel_values(x: torch.Tensor, side: int) -> torch.Tensor:
    """Grey (N, 1, h, w) in [-1, 1] -> the image tower's (N, 3, side, side): what image_processor(side) makes of the
    same image as a PIL image (nearest-neighbour resize; x = u / 127.5 - 1 equals (u / 255 - 0.5) / 0.5)."""
    return to_rgb(F.interpolate(x, size=(side, side), mode="nearest"))


def build_clip(vocab_size: int, bos: int, eos: int, pad: int, side: int, patch: int, heads: int, head_dim: int,
               layers: int):
    """Tiny CLIPModel: a text transformer like sd.build_sd's and a ViT on side x side RGB images."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    if side % patch:
        raise InputError(f"the patch size must divide the image side {side}, got --patch {patch}")
    text = CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=MAX_LENGTH, projection_dim=PROJECTION_DIM,
                          bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, **TEXT)
    width = heads * head_dim
    vision = CLIPVisionConfig(image_size=side, patch_size=patch, num_channels=3, hidden_size=width,
                              intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
                              projection_dim=PROJECTION_DIM)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=PROJECTION_DIM,
                        logit_scale_init_value=LOGIT_SCALE_INIT)
    return CLIPModel(config)


def clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (Radford et al. 2021, Fig. 3) over (B, B) in-batch logits [image, caption] whose
    diagonal holds the true pairs: the mean of the image->caption and caption->image cross-entropies."""
    target = torch.arange(len(logits_per_image), device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.T, target)) / 2


def train_clip(out: Path, steps: int, batch: int, lr: float, seed: int, patch: int, heads: int, head_dim: int,
               layers: int, data: TrainingData | None = None, images=None,
               checkpoint: Checkpointing | None = None) -> dict:
    """Train a tiny CLIP with the symmetric InfoNCE objective on `data` (its images, each with one of its class's
    caption wordings drawn uniformly) and save it, its tokenizer and its image processor under out.

    `images` = (x, y) replaces the train split; `checkpoint`: see common.Checkpointing. Each step draws from one
    CPU generator: the batch (draw_batch) and then one wording per image.
    """
    from transformers import CLIPProcessor

    data = data or training_data("fashion_pairs")
    if batch < 2:
        raise InputError(f"contrastive training needs at least 2 images per batch (in-batch negatives), got {batch}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    side = image_side(data)
    tok = build_tokenizer(out, data)
    clip = build_clip(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, side, patch, heads, head_dim,
                      layers)
    x_all, y_all = train_images(data) if images is None else images

    n_templates = len(data.templates)
    prompts = [cap for c in range(data.num_classes) for cap in data.captions_for(c)]  # row c*K+k, no empty caption
    text = tok(prompts, padding=True, return_tensors="pt")  # (rows, L); the causal mask makes the padding irrelevant

    def step_terms() -> dict[str, torch.Tensor]:
        x, labels = draw_batch(x_all, y_all, batch, gen, data.parts, len(data.words))
        row = labels * n_templates + torch.randint(0, n_templates, (batch,), generator=gen)
        logits = clip(input_ids=text.input_ids[row], attention_mask=text.attention_mask[row],
                      pixel_values=pixel_values(x, side)).logits_per_image  # (B, B) [image, caption]
        with torch.no_grad():  # in-batch image->caption top-1, a caption of the image's class counting as right
            acc = (labels[logits.argmax(1)] == labels).float().mean()
        return {"loss": clip_loss(logits), "acc": acc}

    @torch.no_grad()
    def clamp_scale() -> None:
        clip.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    # the EMA averages clamped values, so the saved scale is within the range too
    avg, wall = train_loop([clip], steps, lr, gen, out.name, step_terms, checkpoint, after_step=clamp_scale)

    clip.save_pretrained(out)
    CLIPProcessor(image_processor=image_processor(side), tokenizer=tok).save_pretrained(out)
    return dict(
        steps=steps, batch=batch, lr=lr, seed=seed, patch=patch, heads=heads, head_dim=head_dim, layers=layers,
        n_train=len(x_all), loss=avg["loss"], acc=avg["acc"], logit_scale=clip.logit_scale.exp().item(), wall=wall,
        vision_params=count_params(clip.vision_model, clip.visual_projection),
        text_params=count_params(clip.text_model, clip.text_projection), params=count_params(clip), vocab=len(tok),
        bytes=folder_size(out), data=data.name, image_size=side,
    )


def clip_flags(s: dict) -> str:
    """The retrain command's image-tower flags."""
    return f" --patch {s['patch']} --heads {s['heads']} --head-dim {s['head_dim']} --layers {s['layers']}"


def write_clip_card(out: Path, s: dict) -> None:
    """Model card of a tiny CLIP trained by train_clip."""
    data = training_data(s.get("data", "fashion_pairs"))
    h, w = data.shape
    side, patch, width = s["image_size"], s["patch"], s["heads"] * s["head_dim"]
    examples = ", ".join(f"`{c}`" for c in data.captions_for(min(7, data.num_classes - 1))[::2])
    budget = f"{s['wall'] / 60:.1f} min on {s['threads']} CPU thread(s)"
    diffusion = out.parent / data.folders.get("sd", "") / "training.json"
    if "sd" in data.folders and diffusion.is_file():  # the budget of the diffusion model it is compared with
        d = json.loads(diffusion.read_text())
        budget += (f", against {d['wall'] / 60:.1f} min ({d['steps']} steps, batch {d['batch']}) on {d['threads']} "
                   f"thread(s) for the diffusion model `{data.folders['sd']}`")
    text = f"""# {out.name}

A tiny contrastive image-text model (CLIP objective, trained from scratch by `scripts/train_tiny_models.py`) on the
same training data as the toolkit's diffusion model `{data.folders.get('sd', '?')}`: the baseline for comparing a
diffusion classifier with a contrastive model on equal terms (the same data, a comparable CPU budget: see Training).

{card_data_line(s)}
- **Captions**: per image, one of the {len(data.templates)} wordings of its class drawn uniformly (e.g. {examples});
  no empty caption.
- **Preprocessing** (the saved `CLIPProcessor`'s, the same at training and scoring time): RGB, resized to {side}x{side}
  by nearest neighbour (a {h}x{w} image's rows doubled exactly; **no centre crop**, so both halves stay whole),
  x / 255 normalised with mean = std = 0.5, i.e. the [-1, 1] pixels the diffusion model sees.
- **Image tower**: `CLIPVisionModel` (ViT), patch {patch} ({(side // patch) ** 2} patches + class token), width
  {width}, {s["layers"]} layer(s), {s["heads"]} heads, MLP {4 * width}; {s["vision_params"]:,} parameters with its
  projection.
- **Text tower**: `CLIPTextModel`, hidden size 64, 3 layers, 4 heads, {MAX_LENGTH} positions, pooled at the end-of-text
  token; {s["text_params"]:,} parameters with its projection. Our character-level BPE `CLIPTokenizer` ({s["vocab"]}
  tokens) whose caption words are single tokens, built as for the diffusion model.
- **Objective**: CLIP's symmetric InfoNCE over the in-batch pairs (Radford et al. 2021): cosine similarities of the
  {PROJECTION_DIM}-dim projections times a learned logit scale (initialised at ln(1/0.07) = 2.6592, clamped to at
  most ln 100 after each step); as in CLIP, another image of the same class in the batch counts as a negative.
  Final logit scale: {s["logit_scale"]:.1f}.
- **Training**: {s["steps"]} steps, batch {s["batch"]} (in-batch negatives), AdamW lr {s["lr"]} (100 warmup steps,
  cosine to 5%), weight decay 0.01, grad-norm clip 1, EMA 0.999 of the weights (saved), seed {s["seed"]}.
  Final loss (moving average): {s["loss"]:.4f}; in-batch image-to-caption top-1 (a caption of the image's class
  counts as right): {100 * s["acc"]:.1f}%. Wall time: {budget}.
- **Weights**: safetensors, {s["bytes"] / 1e6:.2f} MB; {s["params"]:,} parameters.

## Scoring

Through the same runner and items as the diffusion model, as any transformers CLIP folder:

```
python run_compositional.py --model clip --model_path diffusion_classifier/tiny_models/{out.name} ...
```

{s.get("measured") or "Accuracy: not measured yet."}

## Retrain

```
{retrain_command("clip", s, clip_flags(s))}
```
"""
    (out / "README.md").write_text(text)
