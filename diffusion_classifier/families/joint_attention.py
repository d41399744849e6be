"""Joint (MMDiT) attention in which the last context token stands for many identical copies of itself.

SD3 without T5 (absent from the folder, or dropped with --no_t5) ends its context in the pipeline's
max_sequence_length (256) all-zero rows. Identical tokens stay identical through every block (all operations
but attention act per token, and identical queries attend alike), and n identical keys weigh in attention
as one key with log n added to its logit. So one such row, with this processor, gives the image tokens
exactly what the full context gives (up to float rounding), at a fraction of the cost: 77 + 1 context
tokens instead of 77 + 256 for SD3, 32 + 1 instead of 32 + 256 for tiny-flow.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class RepeatedLastKeyAttention:
    """The computation of diffusers' JointAttnProcessor2_0, except that the last context token stands for
    `count` identical copies of itself: its key gets the additive logit bias log(count). Attention without
    context (SD3.5's second, image-only attention) is plain self-attention."""

    def __init__(self, count: int):
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.count, self.log_count = count, math.log(count)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        n, n_img = hidden_states.shape[0], hidden_states.shape[1]

        def heads(x):
            return x.view(n, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
            out = out.transpose(1, 2).reshape(n, -1, out.shape[1] * out.shape[-1]).to(q.dtype)
            return attn.to_out[1](attn.to_out[0](out))
        cq = heads(attn.add_q_proj(encoder_hidden_states))
        ck = heads(attn.add_k_proj(encoder_hidden_states))
        cv = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
        bias = torch.zeros(1, k.shape[2], dtype=q.dtype, device=q.device)
        bias[:, -1] = self.log_count
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(n, -1, out.shape[1] * out.shape[-1]).to(q.dtype)
        img, ctx = out[:, :n_img], out[:, n_img:]
        if not attn.context_pre_only:
            ctx = attn.to_add_out(ctx)
        return attn.to_out[1](attn.to_out[0](img)), ctx
