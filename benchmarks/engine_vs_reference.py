"""Denoiser evaluations per second: the package's engine against the reference's per-image loop.

Both run in one process on the same model, images, noise, schedule and dtype. The reference loop
(lib/reference_loop.py) classifies one image at a time, in batches of 32 jobs, with a host-device sync per
batch; the engine (`adaptive_classify` + `Scorer.evaluate`) packs the jobs of several images into larger
batches and syncs once per stage. It prints evaluations per second of each, their ratio, model FLOPs per
evaluation, achieved FLOP/s (and, on CUDA, the fraction of the GPU's peak and the peak memory), and
checks that both give the same predictions and errors. Settings are timed interleaved (each repeat
runs every one in turn), so a change in machine load hits them all alike.

    python benchmarks/engine_vs_reference.py --model tiny --threads 1 --batch_size 32 128 512 \
        --variants eager channels_last compile+channels_last --json benchmarks/results/engine_vs_reference_tiny.json
    python benchmarks/engine_vs_reference.py --model sd2 --img_size 128 --n_images 2 --n_prompts 4 --to_keep 2 1 --n_samples 1 2
    python benchmarks/engine_vs_reference.py --model sd2 --device cuda --dtype float16 --batch_size 64 128 \
        --variants eager channels_last compile+channels_last --warmup 1 --repeats 2 \
        --json benchmarks/results/engine_vs_reference_sd2_h100.json
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
from pathlib import Path

import torch

from lib import HelpFormatter
from lib.reference_loop import TOLERANCE, compare_results, engine_classify, reference_classify, unet_denoiser
from lib.results import write_result
from lib.timing import count_flops, fmt_rate, peak_tflops, time_runs
from lib.workloads import Workload, folder_workload, sd2_workload, tiny_workload

from diffusion_classifier.engine import Scorer
from diffusion_classifier.loading import DTYPES, default_dtype
from diffusion_classifier.schedules.staged import n_evaluations, validate_schedule
from diffusion_classifier.schedules.statistical import make_schedule

VARIANT_TOKENS = ("eager", "channels_last", "compile", "freeze", "inference_mode", "classic")


def parse_variant(spec: str) -> frozenset[str]:
    """'compile+channels_last' -> {'compile', 'channels_last'}; tokens as in VARIANT_TOKENS."""
    tokens = frozenset(t for t in spec.split("+") if t)
    unknown = sorted(tokens - set(VARIANT_TOKENS))
    if unknown or not tokens:
        raise ValueError(f"engine variant must be '+'-joined tokens from {', '.join(VARIANT_TOKENS)}, got {spec!r}")
    if "freeze" in tokens and "compile" not in tokens:
        raise ValueError(f"engine variant 'freeze' (inductor weight freezing) needs 'compile', got {spec!r}")
    return tokens - {"eager"}


def variant_name(tokens: frozenset[str]) -> str:
    return "engine" + "".join(f" +{t}" for t in VARIANT_TOKENS if t in tokens)


def set_attention(unet: torch.nn.Module, kind: str) -> None:
    """sdpa: torch's fused scaled_dot_product_attention; classic: explicit bmm + softmax."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if kind not in ("sdpa", "classic"):
        raise ValueError(f"attention must be 'sdpa' or 'classic', got {kind!r}")
    unet.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def prepare_denoiser(unet: torch.nn.Module, tokens: frozenset[str], compile_mode: str | None = None):
    """The engine's UNet for a variant (a copy when its layout or attention differ) and a call wrapper."""
    model = unet
    if tokens & {"channels_last", "classic"}:
        model = copy.deepcopy(unet)  # the reference keeps the original module untouched
        set_attention(model, "classic" if "classic" in tokens else "sdpa")
        if "channels_last" in tokens:
            model.to(memory_format=torch.channels_last)
    if "compile" in tokens:
        model = torch.compile(model, mode=compile_mode)  # a second batch shape recompiles once, dynamic

    def context():
        stack = contextlib.ExitStack()
        if "freeze" in tokens:  # read when a shape is compiled, i.e. on calls
            import torch._inductor.config as inductor_config

            stack.enter_context(inductor_config.patch(freezing=True))
        if "inference_mode" in tokens:
            stack.enter_context(torch.inference_mode())
        return stack

    return model, context


def _row(name: str, batch: int, image_batch: int, times: list[float], evaluations: int, flops_per_eval: int,
         peak: float | None) -> dict:
    seconds = statistics.median(times)
    rate = evaluations / seconds
    row = {"variant": name, "batch_size": batch, "image_batch": image_batch, "times_s": times, "seconds": seconds,
           "best_s": min(times), "evals_per_s": rate, "flops_per_s": rate * flops_per_eval}
    if peak:
        row["fraction_of_peak"] = row["flops_per_s"] / (peak * 1e12)
    return row


def _print_row(row: dict) -> None:
    extra = f"  {row['speedup']:5.2f}x" if "speedup" in row else "  1.00x"
    if "fraction_of_peak" in row:
        extra += f"  {100 * row['fraction_of_peak']:5.1f}% of peak"
    if "peak_memory_gib" in row:
        extra += f"  peak mem {row['peak_memory_gib']:.2f} GiB"
    if "agreement" in row:
        a = row["agreement"]
        extra += f"  same preds {a['same_predictions']}/{a['n_images']}, max diff {a['max_abs_diff']:.2g}"
    print(f"  {row['variant']:<34} batch {row['batch_size']:>4}  images/call {row['image_batch']:>3}  "
          f"{row['seconds']:8.2f} s (best {row['best_s']:.2f})  {row['evals_per_s']:9.4g} evals/s  "
          f"{fmt_rate(row['flops_per_s']):>14}{extra}", flush=True)


def run_benchmark(work: Workload, to_keep, n_samples, n_trials: int, loss: str, device: torch.device,
                  dtype: torch.dtype, ref_batch_size: int, batch_sizes: list[int], image_batches: list[int],
                  warmup: int, repeats: int, variants: list[frozenset[str]] = (frozenset(),),
                  compile_mode: str | None = None, peak: float | None = None) -> dict:
    """Time the reference loop and the engine settings (variant x batch size x images per call) interleaved.

    Each repeat runs every setting once in turn, so a change of machine load hits all of them alike;
    a setting's time is the median of its repeats. Returns rows, the best engine row and agreement.
    """
    unet, T = work.unet, len(work.alphas_cumprod)
    n_images, n_prompts = len(work.latents), len(work.conds)
    evaluations = n_images * n_evaluations(n_prompts, to_keep, n_samples, n_trials, T)
    shape = tuple(work.latents.shape[1:])

    def forward(b: int) -> None:
        x = work.noise[:1].expand(b, *shape).to(device, dtype)
        unet(x, torch.full((b,), T // 2, device=device), encoder_hidden_states=work.conds[:1].expand(b, -1, -1).to(device))

    set_attention(unet, "sdpa")  # the reference ran a fused kernel (xformers)
    b_flops = 2
    flops_per_eval = count_flops(lambda: forward(b_flops)) // b_flops
    with torch.inference_mode():
        forward(2)  # first-call allocations, kernel selection
    print(f"{evaluations} evaluations ({n_images} images x {evaluations // n_images}), "
          f"{flops_per_eval / 1e9:.4g} GFLOP per evaluation", flush=True)

    settings = [("reference loop (per image)", ref_batch_size, 1, frozenset(),
                 lambda: reference_classify(unet, work.latents, work.conds, work.alphas_cumprod, work.noise, to_keep,
                                            n_samples, n_trials, ref_batch_size, loss, device, dtype))]
    for tokens in variants:
        model, context = prepare_denoiser(unet, tokens, compile_mode)
        for b in batch_sizes:
            scorer = Scorer(unet_denoiser(model), work.alphas_cumprod, work.noise, device, dtype, b)
            for ib in image_batches:
                def call(scorer=scorer, ib=ib, context=context):
                    with context():
                        return engine_classify(scorer, work.latents, work.conds, to_keep, n_samples, n_trials, ib,
                                               loss, T)

                settings.append((variant_name(tokens), b, ib, tokens, call))

    times: list[list[float]] = [[] for _ in settings]
    outputs: list[object] = [None] * len(settings)
    memory = [0.0] * len(settings)
    for i, (name, b, ib, tokens, fn) in enumerate(settings):
        # torch.compile specialises on each batch shape: one untimed run compiles them all
        for _ in range(max(warmup, int("compile" in tokens))):
            outputs[i] = fn()
    for _ in range(repeats):
        for i, (name, b, ib, tokens, fn) in enumerate(settings):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t, outputs[i] = time_runs(fn, device, 0, 1)
            times[i] += t
            if device.type == "cuda":
                memory[i] = max(memory[i], torch.cuda.max_memory_allocated(device) / 2**30)

    out = {"evaluations": evaluations, "flops_per_eval": flops_per_eval, "engine": []}
    ref = outputs[0]
    for i, (name, b, ib, tokens, fn) in enumerate(settings):
        row = _row(name, b, ib, times[i], evaluations, flops_per_eval, peak)
        if device.type == "cuda":
            row["peak_memory_gib"] = memory[i]
        if i == 0:
            out["reference"] = row
        else:
            row["agreement"] = compare_results(ref, outputs[i])
            row["speedup"] = out["reference"]["seconds"] / row["seconds"]
            out["engine"].append(row)
        _print_row(row)
    best_i = 1 + min(range(len(out["engine"])), key=lambda j: out["engine"][j]["seconds"])
    best = out["engine"][best_i - 1]
    out["best"] = best
    out["speedup"] = best["speedup"]
    agree = dict(best["agreement"])
    agree["within_tolerance"] = agree["max_rel_diff"] <= TOLERANCE.get(dtype, 1e-1)
    out["agreement"] = agree
    if work.labels is not None:
        out["accuracy_reference"] = 100 * sum(p == y for (p, _), y in zip(ref, work.labels)) / n_images
        out["accuracy_engine"] = 100 * sum(r.pred == y for r, y in zip(outputs[best_i], work.labels)) / n_images
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="tiny",
                   help="tiny: the shipped digits model; sd2: the SD 2 base UNet with random weights; or a SD-format folder")
    p.add_argument("--img_size", type=int, default=None, help="image size; default: 512 for sd2, the model's own otherwise")
    p.add_argument("--n_images", type=int, default=None, help="images to classify; default 16 (tiny) or 4 (sd2)")
    p.add_argument("--n_prompts", type=int, default=10, help="candidate prompts per image")
    p.add_argument("--to_keep", nargs="+", type=int, default=[5, 1], help="prompts kept after each stage")
    p.add_argument("--n_samples", nargs="+", type=int, default=[10, 50], help="timesteps of each stage")
    p.add_argument("--n_trials", type=int, default=1, help="noise draws per timestep")
    p.add_argument("--loss", default="l2", choices=["l2", "l1", "huber"], help="error between ε and ε̂")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="model dtype; default float32 on CPU, float16 on CUDA")
    p.add_argument("--device", default=None, help="torch device; default cuda if available, else cpu")
    p.add_argument("--batch_size", nargs="+", type=int, default=None,
                   help="engine batch sizes to try; default 32 128 512 (tiny), 32 (sd2 on CPU), 32 64 128 (sd2 on CUDA)")
    p.add_argument("--image_batch", nargs="+", type=int, default=None,
                   help="images per adaptive_classify call to try; default all of them")
    p.add_argument("--ref_batch_size", type=int, default=32, help="batch size of the reference loop (its default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser for the engine")
    p.add_argument("--compile_mode", default=None, help="torch.compile mode (e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--channels_last", action="store_true", help="channels_last memory format for the engine")
    p.add_argument("--inference_mode", action="store_true", help="run the engine under torch.inference_mode")
    p.add_argument("--variants", nargs="+", default=None,
                   help=f"engine variants timed side by side, each '+'-joined tokens of {', '.join(VARIANT_TOKENS)} "
                        "(freeze: inductor weight freezing; classic: bmm+softmax attention instead of SDPA); "
                        "default: the one set by --compile/--channels_last/--inference_mode")
    p.add_argument("--encode_text", action="store_true",
                   help="sd2: embed random token ids with a random SD2 text encoder instead of drawing embeddings")
    p.add_argument("--warmup", type=int, default=None, help="untimed full runs before timing; default 1 (0 for sd2 on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (the median counts); default 3 (1 for sd2 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads; default torch's choice")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="GPU peak TFLOP/s for this dtype; default by device name (H100/H200 989, A100 312 at 16 bits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, latents and noise bank")
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = default_dtype(args.dtype, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variants:
        variants = [parse_variant(v) for v in args.variants]
    else:
        variants = [frozenset(t for t, on in [("compile", args.compile), ("channels_last", args.channels_last),
                                              ("inference_mode", args.inference_mode)] if on)]
    sd2 = args.model == "sd2"
    slow = sd2 and device.type == "cpu"
    n_images = args.n_images or (4 if sd2 else 16)
    batch_sizes = args.batch_size or ([32] if slow else [32, 64, 128] if sd2 else [32, 128, 512])
    image_batches = args.image_batch or [n_images]
    warmup = args.warmup if args.warmup is not None else (0 if slow else 1)
    repeats = args.repeats if args.repeats is not None else (1 if slow else 3)
    for name, v in [("--n_images", n_images), ("--n_prompts", args.n_prompts), ("--n_trials", args.n_trials),
                    ("--ref_batch_size", args.ref_batch_size), ("--repeats", repeats),
                    ("--batch_size", min(batch_sizes)), ("--image_batch", min(image_batches))]:
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    validate_schedule(args.to_keep, args.n_samples, args.n_prompts)
    _, rows = make_schedule("reference", args.to_keep, args.n_samples, args.n_trials, T=1000)

    if sd2:
        work = sd2_workload(args.img_size or 512, n_images, args.n_prompts, rows, device, dtype, args.seed,
                            args.encode_text)
    elif args.model == "tiny":
        work = tiny_workload(n_images, args.n_prompts, rows, device, dtype, args.seed)
    else:
        work = folder_workload(args.model, args.img_size, n_images, args.n_prompts, rows, device, dtype, args.seed)
    peak = args.peak_tflops
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    if peak is None and device.type == "cuda":
        peak = peak_tflops(device_name, dtype)
    print(f"{work.description}; {device_name}, {dtype}; {args.n_prompts} prompts, schedule keep {args.to_keep} "
          f"samples {args.n_samples}, {args.n_trials} trial(s), loss {args.loss}; torch {torch.__version__}", flush=True)
    if device.type == "cuda" and peak is None:
        print("unknown GPU peak: pass --peak_tflops to get the fraction of peak")

    out = run_benchmark(work, args.to_keep, args.n_samples, args.n_trials, args.loss, device, dtype,
                        args.ref_batch_size, batch_sizes, image_batches, warmup, repeats, variants,
                        args.compile_mode, peak)
    best, agree = out["best"], out["agreement"]
    print(f"best engine setting: {best['variant']}, batch {best['batch_size']}, {best['image_batch']} images per call: "
          f"{best['evals_per_s']:.4g} vs {out['reference']['evals_per_s']:.4g} evals/s = "
          f"{out['speedup']:.2f}x the reference loop")
    print(f"agreement: same prediction for {agree['same_predictions']}/{agree['n_images']} images; errors max abs "
          f"diff {agree['max_abs_diff']:.3g} (relative {agree['max_rel_diff']:.3g}) over {agree['errors_compared']} "
          f"errors: {'within' if agree['within_tolerance'] else 'OUTSIDE'} {dtype} tolerance")
    if "accuracy_engine" in out:
        print(f"accuracy on these digits: reference {out['accuracy_reference']:.1f}%, engine {out['accuracy_engine']:.1f}%")
    out["settings"] = {"model": args.model, "img_size": args.img_size, "n_images": n_images, "n_prompts": args.n_prompts,
                       "to_keep": args.to_keep, "n_samples": args.n_samples, "n_trials": args.n_trials,
                       "loss": args.loss, "dtype": str(dtype), "device": device_name,
                       "variants": [variant_name(v) for v in variants], "batch_sizes": batch_sizes,
                       "image_batches": image_batches, "warmup": warmup, "repeats": repeats, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "peak_tflops": peak, "workload": work.description}
    if args.json:
        write_result(args.json, out, __file__, argv, sort_keys=True)
    return out


if __name__ == "__main__":
    main()
