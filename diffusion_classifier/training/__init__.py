"""Training of the shipped tiny models on the digits train split (run by scripts/train_tiny_models.py).

`common` holds what every kind shares (data, captions and tokenizer, augmentation, lr schedule, EMA, the
training loop `train_loop` and the diffusion models' `fit` over it), `ddpm` the DDPM scheduler with the library's
noise schedule and objective on its betas, and one module per kind: `sd` (digits-sd and its v-prediction variant),
`dit` (digits-dit), `flow` (tiny-flow, SD3 layout) and `contrastive` (fashion-pairs-clip: a tiny CLIP, the
contrastive baseline). The math (noise schedule, forward processes, targets, variational bound) is the library's:
`vb`, `objectives`.
"""
