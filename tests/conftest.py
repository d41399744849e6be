"""Tiny seeded pipelines built in code and saved to folders, loaded the way users load real ones."""
from __future__ import annotations

import importlib.util
import json
import os
import string
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny models: one thread is as fast, and avoids oversubscribing shared CI cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub

REPO = Path(__file__).resolve().parents[1]


def load_script(path: str):
    """Import a script of the checkout as a module, by its path from the repository root.

    "scripts/print_acc.py", "eval_prob_dit.py", "benchmarks/whole_process.py", "benchmarks/lib/timing.py": the
    scripts are not a package. A benchmark is imported by its module name with benchmarks/ on sys.path, as when
    it runs, so that its `lib.<module>` imports and the helpers the tests import are the same modules.
    """
    file = REPO / path
    if not file.is_file():
        raise FileNotFoundError(f"no script {file}")
    if file.parts[-2:-1] == ("lib",) or file.parent == REPO / "benchmarks":
        folder = str(REPO / "benchmarks")
        if folder not in sys.path:
            sys.path.insert(0, folder)
        return importlib.import_module(".".join(file.relative_to(REPO / "benchmarks").with_suffix("").parts))
    spec = importlib.util.spec_from_file_location(file.stem, file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PROMPTS = ["a photo of a cat.", "a photo of a dog.", "a photo of a bird.", "a photo of a frog."]


def write_char_tokenizer(folder: Path, max_length: int = 16) -> None:
    """A character-level CLIP BPE tokenizer (no merges), enough to tokenise test prompts."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = string.ascii_lowercase + string.digits + ".,:'!?-"
    vocab = {}
    for s in symbols:
        vocab[s] = len(vocab)
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(folder)


def write_scheduler(folder: Path, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012) -> None:
    from diffusers import DDPMScheduler

    DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, beta_start=beta_start,
                  beta_end=beta_end).save_pretrained(folder / "scheduler")


def build_tiny_sd(folder: Path, with_vae: bool = True, seed: int = 0) -> Path:
    """A Stable-Diffusion-format pipeline folder: UNet, CLIP text encoder + tokenizer, VAE (factor 2), DDPM."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    latent_channels = 4 if with_vae else 3
    unet = UNet2DConditionModel(
        sample_size=4 if with_vae else 8, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
        attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    text = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=16,
                                        bos_token_id=98, eos_token_id=99, pad_token_id=99))
    unet.save_pretrained(folder / "unet")
    text.save_pretrained(folder / "text_encoder")
    write_char_tokenizer(folder / "tokenizer")
    write_scheduler(folder)
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDPMScheduler"], "vae": [None, None]}
    if with_vae:
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            norm_num_groups=4, sample_size=8, scaling_factor=0.5)
        vae.save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def build_tiny_dit(folder: Path, num_classes: int = 10, sample_size: int = 8, seed: int = 0) -> Path:
    """A DiT-format pipeline folder in pixel space with learned variance and a null class."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=6,
                                  num_layers=2, sample_size=sample_size, patch_size=2, num_embeds_ada_norm=num_classes)
    model.save_pretrained(folder / "transformer")
    write_scheduler(folder, "linear", 1e-4, 0.02)
    index = {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
             "scheduler": ["diffusers", "DDPMScheduler"], "vae": [None, None],
             "id2label": {str(i): f"class{i}" for i in range(num_classes)}}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_sd_pixels(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd_px"), with_vae=False)


@pytest.fixture(scope="session")
def tiny_dit(tmp_path_factory) -> Path:
    return build_tiny_dit(tmp_path_factory.mktemp("tiny_dit"))
