"""Published configs of Stable Diffusion 2 base (stabilityai/stable-diffusion-2-base), for models built in code.

The engine-vs-reference benchmark (lib.workloads.sd2_workload) builds these with random weights: the speed of a forward
pass does not depend on the weights, and no checkpoint has to be downloaded.
"""
from __future__ import annotations

# unet/config.json of stabilityai/stable-diffusion-2-base
SD2_BASE_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],  # read by diffusers as heads per block (64 channels each)
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": True,
}

# text_encoder/config.json (the OpenCLIP ViT-H/14 text tower, penultimate layer: 23 of 24 layers)
SD2_BASE_TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "vocab_size": 49408,
}

# the scheduler fields the classifier reads (only the ᾱ table is used)
SD2_BASE_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}

# VAE: 4 latent channels, 8x downsampling (block_out_channels 128, 256, 512, 512), scaling factor 0.18215
SD2_BASE_VAE_DOWNSAMPLE = 8
SD2_BASE_LATENT_CHANNELS = 4

# Stand-in for the shipped digits model (diffusion_classifier/tiny_models/digits-sd) while it does not
# exist: same layout, pixel space 3x8x8, prompts encoded to (32, 64).
TINY_DIGITS_UNET = {
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}
TINY_DIGITS_CONTEXT = (32, 64)  # (tokens, width) of the prompt embeddings
