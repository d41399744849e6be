"""Tiny seeded pipeline folders of every text-to-image family, built in code (no downloads)."""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from conftest import build_tiny_sd, write_char_tokenizer

CHAR_VOCAB = 2 * 43 + 2  # write_char_tokenizer's vocabulary size; ids 86, 87 are start/end of text


def _index(folder: Path, class_name: str, **parts) -> None:
    index = {"_class_name": class_name}
    index.update({k: list(v) if v else [None, None] for k, v in parts.items()})
    (folder / "model_index.json").write_text(json.dumps(index))


def clip_config(hidden: int = 16, projection: int | None = None, max_length: int = 16):
    from transformers import CLIPTextConfig

    kw = {"projection_dim": projection} if projection else {}
    return CLIPTextConfig(vocab_size=100, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=max_length, bos_token_id=86, eos_token_id=87,
                          pad_token_id=87, **kw)


def write_t5_tokenizer(folder: Path, max_length: int = 24) -> None:
    """A character-level T5-style tokenizer (pad 0, </s> 1 appended, unk 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for c in string.ascii_lowercase + string.digits + ".,":
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=max_length).save_pretrained(folder)


def tiny_t5(d_model: int = 16):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=48, d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def tiny_vae(latent_channels: int = 4, scaling_factor: float = 0.5, shift_factor: float | None = None,
             force_upcast: bool = True):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=8, scaling_factor=scaling_factor, shift_factor=shift_factor,
                         force_upcast=force_upcast)


def build_sd_v(folder: Path, prediction_type: str = "v_prediction") -> Path:
    """The tiny SD folder with a v-prediction (or x0) scheduler config."""
    from diffusers import DDPMScheduler

    build_tiny_sd(folder)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    return folder


def sdxl_unet(cross_attention_dim: int, time_ids: int):
    """A tiny SDXL UNet: text_time added conditioning of `time_ids` ids (6 base, 5 refiner) of 8 and an 8-dim pooled
    embedding, cross-attention over `cross_attention_dim` features."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=cross_attention_dim, attention_head_dim=(2, 4), use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=time_ids * 8 + 8,
    )


def build_sdxl(folder: Path, seed: int = 0, edm_v: bool = False) -> Path:
    """SDXL layout: UNet with text_time added conditioning, CLIP + CLIP-with-projection, VAE, Euler scheduler.

    edm_v: the scheduler of EDM-style v-prediction SDXL models (CosXL): EulerDiscreteScheduler with
    timestep_type 'continuous', whose UNet is given ¼·log σ instead of t."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    sdxl_unet(cross_attention_dim=32, time_ids=6).save_pretrained(folder / "unet")
    CLIPTextModel(clip_config(16)).save_pretrained(folder / "text_encoder")
    CLIPTextModelWithProjection(clip_config(16, projection=8)).save_pretrained(folder / "text_encoder_2")
    write_char_tokenizer(folder / "tokenizer")
    write_char_tokenizer(folder / "tokenizer_2")
    tiny_vae(scaling_factor=0.13025).save_pretrained(folder / "vae")
    edm = dict(timestep_type="continuous", prediction_type="v_prediction", sigma_min=0.002, sigma_max=120.0) if edm_v else {}
    EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           **edm).save_pretrained(folder / "scheduler")
    _index(folder, "StableDiffusionXLPipeline", unet=("diffusers", "UNet2DConditionModel"),
           text_encoder=("transformers", "CLIPTextModel"), text_encoder_2=("transformers", "CLIPTextModelWithProjection"),
           tokenizer=("transformers", "CLIPTokenizer"), tokenizer_2=("transformers", "CLIPTokenizer"),
           vae=("diffusers", "AutoencoderKL"), scheduler=("diffusers", "EulerDiscreteScheduler"))
    return folder


def build_sdxl_refiner(folder: Path, seed: int = 0, requires_aesthetics_score: bool = True) -> Path:
    """SDXL refiner layout (StableDiffusionXLImg2ImgPipeline): no first text encoder (null), CLIP-with-projection
    only, a UNet whose added conditioning takes 5 time ids (original size, crop, aesthetic score) and the pooled
    embedding, requires_aesthetics_score in model_index.json."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    sdxl_unet(cross_attention_dim=16, time_ids=5).save_pretrained(folder / "unet")
    CLIPTextModelWithProjection(clip_config(16, projection=8)).save_pretrained(folder / "text_encoder_2")
    write_char_tokenizer(folder / "tokenizer_2")
    tiny_vae(scaling_factor=0.13025).save_pretrained(folder / "vae")
    EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(folder / "scheduler")
    _index(folder, "StableDiffusionXLImg2ImgPipeline", unet=("diffusers", "UNet2DConditionModel"), text_encoder=None,
           tokenizer=None, text_encoder_2=("transformers", "CLIPTextModelWithProjection"),
           tokenizer_2=("transformers", "CLIPTokenizer"), vae=("diffusers", "AutoencoderKL"),
           scheduler=("diffusers", "EulerDiscreteScheduler"))
    index = json.loads((folder / "model_index.json").read_text())
    index.update(requires_aesthetics_score=requires_aesthetics_score, force_zeros_for_empty_prompt=False)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def build_sd3(folder: Path, with_t5: bool = True, with_vae: bool = True, seed: int = 0,
              dynamic_shifting: bool = False) -> Path:
    """SD3 layout: SD3Transformer2DModel, two CLIPs with projection, T5 (or null), VAE with shift (or null);
    `dynamic_shifting`: a scheduler with use_dynamic_shifting (σ's shift set by the image's token count)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    channels = 4 if with_vae else 3
    SD3Transformer2DModel(sample_size=4 if with_vae else 8, patch_size=2, in_channels=channels, out_channels=channels,
                          num_layers=1, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                          caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=8
                          ).save_pretrained(folder / "transformer")
    CLIPTextModelWithProjection(clip_config(16, projection=8)).save_pretrained(folder / "text_encoder")
    CLIPTextModelWithProjection(clip_config(8, projection=8)).save_pretrained(folder / "text_encoder_2")
    write_char_tokenizer(folder / "tokenizer")
    write_char_tokenizer(folder / "tokenizer_2")
    parts = dict(transformer=("diffusers", "SD3Transformer2DModel"),
                 text_encoder=("transformers", "CLIPTextModelWithProjection"),
                 text_encoder_2=("transformers", "CLIPTextModelWithProjection"),
                 tokenizer=("transformers", "CLIPTokenizer"), tokenizer_2=("transformers", "CLIPTokenizer"),
                 text_encoder_3=None, tokenizer_3=None, vae=None,
                 scheduler=("diffusers", "FlowMatchEulerDiscreteScheduler"))
    if with_t5:
        tiny_t5(32).save_pretrained(folder / "text_encoder_3")
        write_t5_tokenizer(folder / "tokenizer_3")
        parts.update(text_encoder_3=("transformers", "T5EncoderModel"), tokenizer_3=("transformers", "PreTrainedTokenizerFast"))
    if with_vae:
        tiny_vae(scaling_factor=1.5305, shift_factor=0.0609).save_pretrained(folder / "vae")
        parts["vae"] = ("diffusers", "AutoencoderKL")
    FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic_shifting).save_pretrained(folder / "scheduler")
    _index(folder, "StableDiffusion3Pipeline", **parts)
    return folder


def build_flux(folder: Path, guidance_embeds: bool = True, seed: int = 0) -> Path:
    """Flux layout: FluxTransformer2DModel (16 = 4 channels x 2x2 packed), CLIP, T5, VAE with shift, dynamic shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
                           guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6)).save_pretrained(folder / "transformer")
    CLIPTextModel(clip_config(16)).save_pretrained(folder / "text_encoder")
    tiny_t5(16).save_pretrained(folder / "text_encoder_2")
    write_char_tokenizer(folder / "tokenizer")
    write_t5_tokenizer(folder / "tokenizer_2")
    tiny_vae(scaling_factor=0.3611, shift_factor=0.1159).save_pretrained(folder / "vae")
    FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                    base_image_seq_len=256, max_image_seq_len=4096).save_pretrained(folder / "scheduler")
    _index(folder, "FluxPipeline", transformer=("diffusers", "FluxTransformer2DModel"),
           text_encoder=("transformers", "CLIPTextModel"), text_encoder_2=("transformers", "T5EncoderModel"),
           tokenizer=("transformers", "CLIPTokenizer"), tokenizer_2=("transformers", "PreTrainedTokenizerFast"),
           vae=("diffusers", "AutoencoderKL"), scheduler=("diffusers", "FlowMatchEulerDiscreteScheduler"))
    return folder
