"""tiny-flow: a rectified-flow (flow matching) model in the Stable Diffusion 3 layout, in pixel space.

SD3Transformer2DModel on RGB pixels (8x8 digits, 28x28 Fashion-MNIST), two small CLIPTextModelWithProjection text encoders with our own
character-level tokenizer, no T5 (`text_encoder_3`/`tokenizer_3` null) and no VAE, with a
FlowMatchEulerDiscreteScheduler. Noising x_t = (1 - sigma) x0 + sigma eps, the transformer sees the timestep
1000 sigma and is trained to output the velocity eps - x0. The conditioning is built exactly as
StableDiffusion3Pipeline.encode_prompt builds it (`sd3_prompt_embeds`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..families.joint_attention import RepeatedLastKeyAttention
from ..objectives import flow_noise, static_shift
from .cards import card_data_line, card_measured, retrain_command
from .common import CAPTION_DROP, MAX_LENGTH, Checkpointing, build_tokenizer, caption_sampler, count_params, fit, folder_size, train_images
from .data import DIGITS, TrainingData, training_data

DEFAULTS = dict(steps=2500, batch=64, lr=1e-3, shift=1.0, patch=2, heads=4, head_dim=24, layers=4)
# Committed settings per training data. On 28x28, patch 2 (196 tokens) at width 80 (4 heads of 20) and 4 layers scores
# about 330 evaluations/s on two CPU cores (float32, batch 256; width 96 gives 270), and 7,000 steps take 105 minutes.
DATA_DEFAULTS = {
    "digits": DEFAULTS,
    "fashion_mnist": dict(steps=7000, batch=128, lr=1e-3, shift=1.0, patch=2, heads=4, head_dim=20, layers=4),
}
ARCH = ("patch", "heads", "head_dim", "layers")
# The two CLIP text encoders: (hidden size, layers, projection dim); different widths, as in SD3.
TEXT_ENCODERS = ((64, 3, 32), (32, 2, 32))
JOINT_ATTENTION_DIM = 128  # >= the concatenated CLIP widths (96): the pipeline zero-pads them to this width
T5_ZEROS_LENGTH = 256  # the pipeline's default max_sequence_length: the length of the all-zero T5 part without T5
NUM_TRAIN_TIMESTEPS = 1000
MEASURED = ("Measured on the whole digits test split (359 images) through the toolkit's SD3 family; see the README's\n"
            "digits table (`python benchmarks/digits_accuracy.py`).")


def sd3_prompt_embeds(tokenizers, text_encoders, prompts: list[str], joint_attention_dim: int,
                      t5_length: int = T5_ZEROS_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds (P, L + t5_length, joint_attention_dim), pooled (P, sum of projection dims)) as
    StableDiffusion3Pipeline.encode_prompt builds them without T5: per CLIP encoder, the prompt padded to the
    first tokenizer's max length, its penultimate hidden states and its projected pooled output; the hidden
    states concatenated along features, zero-padded to joint_attention_dim, then followed along the sequence
    by t5_length all-zero rows (what the pipeline uses when text_encoder_3 is None)."""
    length = tokenizers[0].model_max_length
    hidden, pooled = [], []
    for tok, enc in zip(tokenizers, text_encoders):
        ids = tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        out = enc(ids.to(enc.device), output_hidden_states=True)
        pooled.append(out[0])
        hidden.append(out.hidden_states[-2])
    clip = torch.cat(hidden, dim=-1)
    clip = F.pad(clip, (0, joint_attention_dim - clip.shape[-1]))
    t5 = clip.new_zeros(len(prompts), t5_length, joint_attention_dim)
    return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)


class FlowNoising:
    """Noise levels sigma from a logit-normal(0, 1) (SD3's default training density), mapped through the
    scheduler's shift, and the rectified-flow forward process x_t = (1 - sigma) x0 + sigma eps."""

    def __init__(self, shift: float):
        self.shift = shift

    def draw_times(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """sigma (B,) = shift(sigmoid(n)), n ~ N(0, 1)."""
        return static_shift(torch.sigmoid(torch.randn(batch, generator=gen)), self.shift)

    def add_noise(self, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - sigma) x0 + sigma eps: (B, C, H, W)."""
        return flow_noise(x0, sigma, eps)


def build_text_encoder(vocab_size: int, bos: int, eos: int, pad: int, hidden: int, layers: int, projection: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=projection,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
    )
    return CLIPTextModelWithProjection(config)


def build_transformer(patch: int, heads: int, head_dim: int, layers: int, size: int = DIGITS.size):
    """Tiny SD3Transformer2DModel on size x size RGB pixels."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=size, patch_size=patch, in_channels=3, out_channels=3, num_layers=layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=JOINT_ATTENTION_DIM,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=sum(p for _, _, p in TEXT_ENCODERS),
        pos_embed_max_size=size // patch,
    )


def train_flow(out: Path, steps: int, batch: int, lr: float, shift: float, seed: int, patch: int, heads: int,
               head_dim: int, layers: int, images=None, data: TrainingData = DIGITS,
               checkpoint: Checkpointing | None = None) -> dict:
    """Train a flow model (tiny-flow, fashion-flow) on `data` and save it in the Stable Diffusion 3 pipeline layout
    under out. `images` = (x, y) replaces the train split; `checkpoint`: see common.Checkpointing."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tok = build_tokenizer(out / "tokenizer", data)
    tok2 = build_tokenizer(out / "tokenizer_2", data)
    special = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    encoders = [build_text_encoder(len(tok), *special, *spec) for spec in TEXT_ENCODERS]
    transformer = build_transformer(patch, heads, head_dim, layers, data.size)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    x_all, y_all = train_images(data) if images is None else images

    prompts, draw_caption = caption_sampler(gen, data)  # row c*K+k, last = ""

    def losses(x0, row, sigma, eps, xt) -> dict[str, torch.Tensor]:
        uniq, inverse = torch.unique(row, return_inverse=True)  # encode each distinct prompt of the batch once
        # the T5 zeros as one row standing for T5_ZEROS_LENGTH (RepeatedLastKeyAttention): same function, faster
        embeds, pooled = sd3_prompt_embeds([tok, tok2], encoders, [prompts[i] for i in uniq.tolist()],
                                           JOINT_ATTENTION_DIM, t5_length=1)
        v_hat = transformer(xt, encoder_hidden_states=embeds[inverse], pooled_projections=pooled[inverse],
                            timestep=sigma * NUM_TRAIN_TIMESTEPS).sample
        return {"loss": F.mse_loss(v_hat, eps - x0)}

    transformer.set_attn_processor(RepeatedLastKeyAttention(T5_ZEROS_LENGTH))
    avg, wall = fit([transformer, *encoders], (x_all, y_all), FlowNoising(shift), steps, batch, lr, gen, out.name,
                    draw_caption, losses, checkpoint=checkpoint)

    from diffusers.models.attention_processor import JointAttnProcessor2_0

    transformer.set_attn_processor(JointAttnProcessor2_0())
    transformer.save_pretrained(out / "transformer", safe_serialization=True)
    encoders[0].save_pretrained(out / "text_encoder", safe_serialization=True)
    encoders[1].save_pretrained(out / "text_encoder_2", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusion3Pipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "text_encoder_3": [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": [None, None], "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": [None, None],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return dict(
        steps=steps, batch=batch, lr=lr, shift=shift, seed=seed, n_train=len(x_all), loss=avg["loss"], wall=wall,
        transformer_params=count_params(transformer), text_params=[count_params(e) for e in encoders],
        vocab=len(tok), bytes=folder_size(out), patch=patch, heads=heads, head_dim=head_dim, layers=layers,
        data=data.name, size=data.size,
    )


def flow_flags(s: dict) -> str:
    """The retrain command's flow flags."""
    return f" --shift {s['shift']:g}" + "".join(f" --{k.replace('_', '-')} {s[k]}" for k in ARCH if k in s)


def write_flow_card(out: Path, s: dict) -> None:
    """Model card of tiny-flow."""
    (w1, l1, p1), (w2, l2, p2) = TEXT_ENCODERS
    size = s.get("size", DIGITS.size)
    data = training_data(s.get("data", "digits"))
    examples = ", ".join(f"`{c}`" for c in data.captions_for(7)[::4])
    text = f"""# {out.name}

A tiny text-conditioned pixel-space flow-matching (rectified flow) model in the Stable Diffusion 3 pipeline
layout, trained by `scripts/train_tiny_models.py --model flow` for the toolkit's tests and examples.

{card_data_line(s)}
- **Pixel space**: no VAE (`"vae": [null, null]` in `model_index.json`); `sample_size` is {size}.
- **Transformer**: `SD3Transformer2DModel` (MMDiT joint attention), patch size {s["patch"]}
  ({(size // s["patch"]) ** 2} image tokens), width {s["heads"] * s["head_dim"]} ({s["heads"]} heads x {s["head_dim"]}),
  {s["layers"]} layers, joint_attention_dim {JOINT_ATTENTION_DIM}, pooled_projection_dim {p1 + p2}, in/out channels 3;
  {s["transformer_params"]:,} parameters.
- **Text encoders**: two `CLIPTextModelWithProjection` trained jointly with the transformer: hidden {w1}, {l1} layers,
  projection {p1} ({s["text_params"][0]:,} parameters) and hidden {w2}, {l2} layers, projection {p2}
  ({s["text_params"][1]:,} parameters); {MAX_LENGTH} positions; no T5 (`text_encoder_3`/`tokenizer_3` null).
  Conditioning as `StableDiffusion3Pipeline.encode_prompt` builds it: the penultimate hidden states of both
  encoders concatenated ({w1 + w2} features), zero-padded to {JOINT_ATTENTION_DIM}, followed by the {T5_ZEROS_LENGTH}
  all-zero rows that stand for T5 when it is absent (the pipeline's default max_sequence_length); pooled = the two
  projected pooled outputs concatenated.
- **Tokenizers** (`tokenizer`, `tokenizer_2`, identical): the character-level BPE `CLIPTokenizer` of the SD-layout models
  ({s["vocab"]} tokens, whole-word merges for the caption vocabulary).
- **Captions**: per sample, one of {len(data.templates)} wordings (e.g. {examples}),
  and the empty caption with probability {CAPTION_DROP} (so `""` scores unconditionally).
- **Scheduler**: `FlowMatchEulerDiscreteScheduler`, 1000 training timesteps, shift {s["shift"]:g}. x_t = (1 - sigma) x0
  + sigma eps; the transformer gets timestep 1000 sigma and predicts the velocity eps - x0. Shift 1 (no shift):
  SD3's shift of 3 moves sigma towards pure noise for 128x128 latents; a {size}x{size} image has far fewer pixels,
  so its signal is destroyed at lower noise levels already and no shift towards noise is wanted.
- **Training**: {s["steps"]} steps, batch {s["batch"]}, AdamW lr {s["lr"]} (100 warmup steps, cosine to 5%),
  weight decay 0.01, grad-norm clip 1, EMA 0.999 of the weights (saved), seed {s["seed"]}, CPU ({s["threads"]} thread(s)).
  Loss: velocity MSE (target eps - x0), unweighted, with sigma = sigmoid(n), n ~ N(0, 1) (SD3's logit-normal
  density, continuous, then shifted by the scheduler's shift), which puts the training on the middle noise levels
  that separate the classes. Final loss (moving average of the training loss): {s["loss"]:.4f}.
  Wall time: {s["wall"] / 60:.1f} min.
- **Weights**: safetensors, {s["bytes"] / 1e6:.2f} MB.

## Test accuracy (Diffusion Classifier)

{card_measured(s, MEASURED)}

## Retrain

```
{retrain_command("flow", s, flow_flags(s))}
```
"""
    (out / "README.md").write_text(text)
