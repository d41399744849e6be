"""The reference's classification loop, re-created from its description, and the engine's loop to compare with.

The reference classifies one image at a time, in batches of 32 jobs, with everything (latent, noise,
ᾱ, embeddings) in the model dtype and a host-device sync per batch; it forms x_t itself, as the
reference script does, so that the comparison with the engine (which noises through the objective)
is between two independent computations. Used by engine_vs_reference.py and whole_process.py.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from diffusion_classifier.engine import Scorer
from diffusion_classifier.schedules.staged import adaptive_classify

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}  # relative, on the errors


def reference_errors(unet, latent, text_embeds, alphas_cumprod, noise, ts, noise_idxs, text_idxs,
                     batch_size: int = 32, loss: str = "l2") -> torch.Tensor:
    """One image's errors for a list of (t, noise index, prompt index) jobs, batch by batch: (J,) float32.

    `latent` (1,C,H,W), `noise` and `alphas_cumprod` are already on the device in the model dtype, as
    in the reference; each batch's errors are copied to the host before the next batch starts.
    """
    device = latent.device
    out = torch.zeros(len(ts))
    for start in range(0, len(ts), batch_size):
        end = min(start + batch_size, len(ts))
        t = torch.tensor(ts[start:end], device=device)
        eps = noise[noise_idxs[start:end]]  # (B, C, H, W)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noised = latent * a**0.5 + eps * (1 - a) ** 0.5
        # the reference passed t as half in fp16 (exact up to 2048); int64 keeps bf16 exact too
        pred = unet(noised, t, encoder_hidden_states=text_embeds[text_idxs[start:end]]).sample
        if loss == "l2":
            err = F.mse_loss(eps, pred, reduction="none").mean(dim=(1, 2, 3))
        elif loss == "l1":
            err = F.l1_loss(eps, pred, reduction="none").mean(dim=(1, 2, 3))
        elif loss == "huber":
            err = F.huber_loss(eps, pred, reduction="none", delta=1.0).mean(dim=(1, 2, 3))
        else:
            raise ValueError(f"loss must be l2, l1 or huber, got {loss!r}")
        out[start:end] = err.cpu()  # host-device sync per batch
    return out


def reference_image(unet, latent, text_embeds, alphas_cumprod, noise, to_keep, n_samples, n_trials: int = 1,
                    batch_size: int = 32, loss: str = "l2", T: int = 1000) -> tuple[int, dict]:
    """The reference's adaptive evaluation of one image: (predicted prompt index, {prompt: {'t', 'pred_errors'}})."""
    m = max(n_samples)
    grid = list(range(T // m // 2, T, T // m))[:m]
    evaluated: set[int] = set()
    remaining = list(range(len(text_embeds)))
    data: dict[int, dict[str, torch.Tensor]] = {}
    for n, keep in zip(n_samples, to_keep):
        step = len(grid) // n
        new_ts = [t for t in grid[step // 2 :: step][:n] if t not in evaluated]
        ts, noise_idxs, text_idxs = [], [], []
        for p in remaining:
            for t_idx, t in enumerate(new_ts, start=len(evaluated)):
                ts += [t] * n_trials
                noise_idxs += list(range(n_trials * t_idx, n_trials * (t_idx + 1)))
                text_idxs += [p] * n_trials
        evaluated.update(new_ts)
        errors = reference_errors(unet, latent, text_embeds, alphas_cumprod, noise, ts, noise_idxs, text_idxs,
                                  batch_size, loss)
        ts_all, idx_all = torch.tensor(ts, dtype=torch.long), torch.tensor(text_idxs, dtype=torch.long)
        for p in remaining:
            mask = idx_all == p
            if p in data:
                data[p] = {"t": torch.cat([data[p]["t"], ts_all[mask]]),
                           "pred_errors": torch.cat([data[p]["pred_errors"], errors[mask]])}
            else:
                data[p] = {"t": ts_all[mask], "pred_errors": errors[mask]}
        scores = torch.stack([-data[p]["pred_errors"].mean() for p in remaining])
        best = torch.topk(scores, k=keep).indices.tolist()
        remaining = [remaining[i] for i in best]
    assert len(remaining) == 1
    return remaining[0], data


def reference_classify(unet, latents, conds, alphas_cumprod, noise, to_keep, n_samples, n_trials: int = 1,
                       batch_size: int = 32, loss: str = "l2", device=torch.device("cpu"),
                       dtype: torch.dtype = torch.float32) -> list[tuple[int, dict]]:
    """The reference's loop over a dataset: one image at a time, everything in the model dtype."""
    device = torch.device(device)
    ab = alphas_cumprod.to(device=device, dtype=dtype)
    bank = noise.to(device=device, dtype=dtype)
    embeds = conds.to(device=device, dtype=dtype)
    results = []
    with torch.inference_mode():
        for i in range(len(latents)):
            latent = latents[i : i + 1].to(device=device, dtype=dtype)
            results.append(reference_image(unet, latent, embeds, ab, bank, to_keep, n_samples, n_trials,
                                           batch_size, loss, len(alphas_cumprod)))
    return results


def unet_denoiser(unet: Callable) -> Callable:
    """The engine's denoiser interface over a diffusers UNet (or its compiled wrapper)."""
    return lambda x_t, t, cond: unet(x_t, t, encoder_hidden_states=cond).sample


def engine_classify(scorer: Scorer, latents, conds, to_keep, n_samples, n_trials: int = 1, image_batch: int = 1,
                    loss: str = "l2", T: int = 1000) -> list:
    """adaptive_classify over groups of `image_batch` images, each group's jobs packed into shared batches."""
    results = []
    for start in range(0, len(latents), image_batch):
        group = latents[start : start + image_batch]
        evaluate = lambda jobs, group=group: scorer.evaluate(group, conds, jobs, loss)  # noqa: E731
        results += adaptive_classify(evaluate, len(group), len(conds), to_keep, n_samples, n_trials, T)
    return results


def compare_results(reference: list[tuple[int, dict]], engine: list) -> dict:
    """How far the engine's predictions and errors are from the reference loop's."""
    same, diff, scale, compared = 0, 0.0, 0.0, 0
    for (pred, data), res in zip(reference, engine):
        same += int(pred == res.pred)
        for c, entry in data.items():
            if c not in res.errors:
                continue  # the two pruned differently at an earlier stage
            a, b = entry["pred_errors"].double(), res.errors[c]["pred_errors"].double()
            n = min(len(a), len(b))
            assert torch.equal(entry["t"][:n], res.errors[c]["t"][:n]), "timesteps out of order"
            if n:
                diff = max(diff, (a[:n] - b[:n]).abs().max().item())
                scale = max(scale, a[:n].abs().max().item())
                compared += n
    return {"same_predictions": same, "n_images": len(reference), "max_abs_diff": diff,
            "max_rel_diff": diff / scale if scale else 0.0, "errors_compared": compared}
