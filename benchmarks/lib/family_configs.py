"""Published configs of the large text-to-image denoisers, for architectures built in code with random weights.

Values are those of the diffusers folders on the hub (transformer/config.json or unet/config.json,
scheduler/scheduler_config.json), written out so no download is needed. Text-side sizes give the
shapes of the prompt embeddings each denoiser consumes.
"""
from __future__ import annotations

# stabilityai/stable-diffusion-xl-base-1.0: unet/config.json
SDXL_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + the 1280-d pooled CLIP-G embedding
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SDXL_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon"}
SDXL_TEXT = {"tokens": 77, "hidden": 768 + 1280, "pooled": 1280}  # CLIP-L + CLIP-G penultimate states, CLIP-G pooled

# stabilityai/stable-diffusion-3.5-medium: transformer/config.json
SD35_MEDIUM_TRANSFORMER = {
    "attention_head_dim": 64,
    "caption_projection_dim": 1536,
    "dual_attention_layers": list(range(13)),
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 24,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "qk_norm": "rms_norm",
    "sample_size": 128,
}
# stabilityai/stable-diffusion-3.5-large: transformer/config.json
SD35_LARGE_TRANSFORMER = {
    "attention_head_dim": 64,
    "caption_projection_dim": 2432,
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 38,
    "num_layers": 38,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
    "sample_size": 128,
}
SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
SD3_TEXT = {"tokens": 77 + 256, "hidden": 4096, "pooled": 768 + 1280}  # CLIPs padded to T5 width, then 256 T5 tokens

# black-forest-labs/FLUX.1-dev: transformer/config.json (schnell: the same without the guidance embedding)
FLUX1_DEV_TRANSFORMER = {
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}
FLUX1_DEV_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
                       "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                       "max_image_seq_len": 4096}
FLUX1_TEXT = {"tokens": 512, "hidden": 4096, "pooled": 768}  # T5-XXL states (max_sequence_length 512), CLIP-L pooled

VAE_DOWNSAMPLE = 8
