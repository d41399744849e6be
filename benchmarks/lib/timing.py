"""FLOP counting, timing and GPU peaks shared by the speed benchmarks."""
from __future__ import annotations

import time
from typing import Callable

import torch

# dense fp16/bf16 tensor-core and fp32 (non-tensor-core) peaks in TFLOP/s; the first name that matches wins
PEAK_TFLOPS = {
    "H100 PCIE": {"half": 756.0, "float32": 51.0},
    "H200": {"half": 989.0, "float32": 67.0},
    "H100": {"half": 989.0, "float32": 67.0},
    "A100": {"half": 312.0, "float32": 19.5},
}


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    b, h, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv  # Q·Kᵀ and softmax(·)·V


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of one call of fn, from torch's FLOP counter, CPU attention included."""
    from torch.utils.flop_counter import FlopCounterMode

    # the CPU flash-attention kernel is missing from torch's FLOP table
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    """Dense peak TFLOP/s of a known GPU for this dtype, or None."""
    kind = "float32" if dtype == torch.float32 else "half"
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name.upper():
            return peaks[kind]
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> tuple[list[float], object]:
    """Wall times of `repeats` calls after `warmup` untimed ones, and the last call's output."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times, out


def fmt_rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.2f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"
