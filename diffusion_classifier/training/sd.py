"""digits-sd, fashion-sd and their variants: a text-conditioned UNet2DConditionModel + CLIPTextModel with our own
character-level tokenizer, trained on varied captions and saved in the Stable Diffusion pipeline layout. The
variants change the objective alone: v targets (`sd-v`), or rectified flow (`sd-flow`: x_t = (1-σ)x0 + σε, the
UNet given σ·1000 predicts ε - x0, a FlowMatchEulerDiscreteScheduler in the folder), so a flow model and a DDPM
model of one architecture, data and budget can be compared."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError
from .cards import EVAL_PROTOCOL, card_data_line, card_measured, retrain_commands, warm_card_lines
from .common import CAPTION_DROP, MAX_LENGTH, Checkpointing, build_tokenizer, caption_sampler, count_params, fit, folder_size, train_images, warm_start
from .data import DIGITS, TrainingData, training_data
from .ddpm import BETA_RANGES, DdpmNoising, make_scheduler, training_objective
from .flow import FlowNoising

# Committed settings per training data. `channels`: the UNet's block_out_channels, one level per entry, every
# level a DownBlock2D but the last, a CrossAttnDownBlock2D (the 28x28 model stays at >= 500 evaluations/s on two
# CPU cores: 16 channels at full resolution, cross-attention at the lowest). On Fashion-MNIST, 12,000 steps of 128
# take 93 minutes at two threads (the first release's 3,000 steps reached a loss of 0.0285; 12,000 reach 0.0226).
DEFAULTS = dict(steps=2000, batch=64, lr=1e-3, beta_schedule="scaled_linear", channels=(32, 64))
DATA_DEFAULTS = {
    "digits": DEFAULTS,
    "fashion_mnist": dict(steps=12000, batch=128, lr=1e-3, beta_schedule="scaled_linear", channels=(16, 32, 64, 64)),
    "fashion_pairs": dict(steps=3000, batch=128, lr=1e-3, beta_schedule="scaled_linear", channels=(16, 32, 64, 64)),
}
ARCH = ("channels",)
PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")
FLOW_SHIFT = 1.0  # sd-flow: no shift of σ towards noise (a 28x28 image loses its signal early already; fashion-flow's)
MEASURED = {
    "epsilon": (
        EVAL_PROTOCOL + "\n\n| prompts | l2 | l1 |\n| --- | --- | --- |\n"
        "| `a photo of the number: '{d}'.` (the digits prompts CSV) | 99.2% | 98.6% |\n"
        "| `{word}` (`zero` ... `nine`) | 99.4% | 98.6% |"
    ),
    "v_prediction": (
        "Measured on the whole digits test split (359 images) through the toolkit, whose errors are in eps-space\n"
        "(the v output converted to eps); see the README's digits table (`python benchmarks/digits_accuracy.py`)."
    ),
    "flow": "Measured through the toolkit (errors in ε-space, the flow default); see docs/fashion-mnist.md.",
}


def build_sd(vocab_size: int, bos: int, eos: int, pad: int, size: int | tuple[int, int] = DIGITS.size,
             channels=DEFAULTS["channels"]):
    """Tiny UNet2DConditionModel (size x size, or H x W for size (H, W); 3 channels) and CLIPTextModel."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH, projection_dim=64, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
    )
    text_encoder = CLIPTextModel(text_config)
    levels = len(channels)
    unet = UNet2DConditionModel(
        sample_size=size, in_channels=3, out_channels=3,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        block_out_channels=tuple(channels), layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=text_config.hidden_size, attention_head_dim=4,  # 4 heads (diffusers' naming)
    )
    return unet, text_encoder




def train_sd(out: Path, steps: int, batch: int, lr: float, beta_schedule: str, seed: int,
             prediction_type: str = "epsilon", data: TrainingData = DIGITS, channels=None, images=None,
             checkpoint: Checkpointing | None = None, init: Path | None = None, held: list[int] | None = None) -> dict:
    """Train a text-conditioned UNet (digits-sd, fashion-sd; with prediction_type "v_prediction", the v-target
    variant) on `data` and save it in the Stable Diffusion pipeline layout under out. Both variants see the same
    draws in the same order. `images` = (x, y) replaces the train split; `checkpoint`: see common.Checkpointing.
    `init`: a model folder this script wrote, of the same architecture, to go on training from (its weights, with
    a new warmup and cosine schedule); `held`: the held-out train indices, which must be the ones it held out."""
    import diffusers

    channels = tuple(channels or DATA_DEFAULTS.get(data.name, DEFAULTS)["channels"])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tok = build_tokenizer(out / "tokenizer", data)
    unet, text_encoder = build_sd(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, data.size, channels)
    before = warm_start({"unet": unet, "text_encoder": text_encoder}, init, held) if init is not None else None
    if before is not None and (before.get("data", "digits"), before.get("prediction_type", "epsilon")) != (data.name, prediction_type):
        raise InputError(f"--init {init} was trained on {before.get('data', 'digits')} with "
                         f"{before.get('prediction_type', 'epsilon')} targets; this run trains on {data.name} with "
                         f"{prediction_type} targets")
    if prediction_type not in PREDICTION_TYPES:
        raise InputError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if prediction_type == "flow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT)
        noising = FlowNoising(FLOW_SHIFT)  # σ from SD3's logit-normal density, x_t = (1-σ)x0 + σε

        def model_output(xt, t, ctx):  # the UNet is given the timestep σ·1000, as the flow pipelines give it
            return unet(xt, t * scheduler.config.num_train_timesteps, encoder_hidden_states=ctx).sample

        def target_pair(out_t, x0, xt, eps, t):
            return out_t, eps - x0  # the velocity
    else:
        scheduler = make_scheduler(beta_schedule, "fixed_small", clip_sample=False, steps_offset=1,  # what StableDiffusionPipeline expects
                                   prediction_type=prediction_type)
        objective = training_objective(scheduler)  # eps or v = sqrt(ᾱ_t) eps - sqrt(1-ᾱ_t) x0 as the target
        noising = DdpmNoising(objective)

        def model_output(xt, t, ctx):
            return unet(xt, t, encoder_hidden_states=ctx).sample

        target_pair = objective.compare
    x_all, y_all = train_images(data) if images is None else images

    prompts, draw_caption = caption_sampler(gen, data)  # row c*K+k, last = ""
    ids = tok(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids

    def losses(x0, row, t, eps, xt) -> dict[str, torch.Tensor]:
        uniq, inverse = torch.unique(row, return_inverse=True)  # encode each distinct prompt of the batch once
        ctx = text_encoder(ids[uniq]).last_hidden_state  # (P, L, D)
        out_t = model_output(xt, t, ctx[inverse])
        return {"loss": F.mse_loss(*target_pair(out_t, x0, xt, eps, t))}  # output against its target

    avg, wall = fit([unet, text_encoder], (x_all, y_all), noising, steps, batch, lr, gen, out.name,
                    draw_caption, losses, checkpoint=checkpoint, parts=data.parts, item_classes=len(data.words))

    unet.save_pretrained(out / "unet", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", type(scheduler).__name__], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [None, None],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return dict(
        steps=steps, batch=batch, lr=lr, beta_schedule=beta_schedule, seed=seed, n_train=len(x_all),
        prediction_type=prediction_type, loss=avg["loss"], wall=wall, unet_params=count_params(unet), text_params=count_params(text_encoder),
        vocab=len(tok), bytes=folder_size(out), data=data.name, size=data.size, channels=list(channels),
        **({"init": {k: v for k, v in before.items() if k != "measured"}} if before is not None else {}),
    )


def sd_flags(s: dict) -> str:
    """The retrain command's UNet flags."""
    channels = s.get("channels", DEFAULTS["channels"])
    betas = "" if s.get("prediction_type") == "flow" else f" --beta-schedule {s['beta_schedule']}"
    return f"{betas} --channels {' '.join(map(str, channels))}"


def write_sd_card(out: Path, s: dict) -> None:
    """Model card of a text-conditioned UNet (digits-sd, fashion-sd) or its v-prediction variant."""
    b0, b1 = BETA_RANGES[s["beta_schedule"]]
    size, channels = s.get("size", DIGITS.size), tuple(s.get("channels", DEFAULTS["channels"]))
    data = training_data(s.get("data", "digits"))
    examples = ", ".join(f"`{c}`" for c in data.captions_for(7)[::3])
    blocks = " + ".join(["DownBlock2D"] * (len(channels) - 1) + ["CrossAttnDownBlock2D"])
    kind = s.get("prediction_type", "epsilon")
    v = kind == "v_prediction"
    objective = ("v prediction (target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0; otherwise the recipe of digits-sd)"
                 if v else "epsilon prediction")
    loss = "v MSE" if v else "eps MSE"
    schedule = f"""DDPM, 1000 steps, `{s["beta_schedule"]}` betas {b0}..{b1}, {objective}
  (chosen over `linear` 1e-4..0.02, which destroys an 8x8 image earlier: on a short-trained (2000-3000 steps)
  digits-dit, `scaled_linear` classified better, 89.7% vs 88.0%; not measured on this model)."""
    timesteps = "uniform timesteps"
    if kind == "flow":
        schedule = (f"rectified flow (`FlowMatchEulerDiscreteScheduler`, 1000 training timesteps, shift "
                    f"{s.get('shift', FLOW_SHIFT):g}): x_t = (1 - sigma) x0 + sigma eps, the UNet is given the timestep "
                    f"1000 sigma and predicts the velocity eps - x0; everything else is the recipe of the epsilon model "
                    f"of this data, so the two differ in their objective alone.")
        loss, timesteps = "velocity MSE (target eps - x0)", "sigma = sigmoid(n), n ~ N(0, 1) (SD3's logit-normal density)"
    text = f"""# {out.name}

A tiny text-conditioned pixel-space diffusion model in the Stable Diffusion pipeline layout, trained by
`scripts/train_tiny_models.py` for the toolkit's tests and examples.

{card_data_line(s)}
- **Pixel space**: no VAE (`"vae": [null, null]` in `model_index.json`); the UNet's `sample_size` is {size}.
- **UNet**: `UNet2DConditionModel`, 3 -> 3 channels, block_out_channels {channels}, {blocks},
  1 layer per block, 4 attention heads, cross-attention dim 64;
  {s["unet_params"]:,} parameters.
- **Text encoder**: `CLIPTextModel`, hidden size 64, 3 layers, 4 heads, 32 positions; {s["text_params"]:,} parameters,
  trained jointly with the UNet. Text embedding = last hidden state of the prompt padded to 32 tokens.
- **Tokenizer**: our own character-level BPE `CLIPTokenizer` ({s["vocab"]} tokens): every lowercase letter, digit and
  ASCII punctuation mark, each also with the `</w>` end-of-word suffix, `<|startoftext|>`, `<|endoftext|>`, and
  merges that make each word of the training captions one token. Other lowercase text still encodes, letter by letter.
- **Captions**: per sample, one of {len(data.templates)} wordings (e.g. {examples}; the first is the wording of
  the dataset's prompts CSV), and the empty caption with probability {CAPTION_DROP} (so `""` scores unconditionally).
- **Schedule**: {schedule}
- **Training**: {s["steps"]} steps, batch {s["batch"]}, AdamW lr {s["lr"]} (100 warmup steps, cosine to 5%),
  weight decay 0.01, grad-norm clip 1, EMA 0.999 of the weights (saved), seed {s["seed"]}, CPU ({s["threads"]} thread(s)).
  Loss: {loss} with {timesteps}. Final loss (moving average of the training loss): {s["loss"]:.4f}.
  Wall time: {s["wall"] / 60:.1f} min.{warm_card_lines(s)}
- **Weights**: safetensors, {s["bytes"] / 1e6:.2f} MB.

## Test accuracy (Diffusion Classifier)

{card_measured(s, MEASURED[kind])}

## Retrain

```
{retrain_commands({"v_prediction": "sd-v", "flow": "sd-flow"}.get(kind, "sd"), s, sd_flags)}
```
"""
    (out / "README.md").write_text(text)


