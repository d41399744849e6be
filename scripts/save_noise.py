"""Save a fixed noise bank: torch.randn(1024, 4, S/8, S/8) seeded with 42, as the reference does ((4, H/8, W/8) for H W)."""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diffusion_classifier.errors import InputError  # noqa: E402
from diffusion_classifier.noise import REFERENCE_ROWS, REFERENCE_SEED, reference_noise  # noqa: E402
from diffusion_classifier.records import atomic_write_bytes, check_output_file  # noqa: E402
from diffusion_classifier.cli import add_img_size_arg, positive_int, seed_int  # noqa: E402
from diffusion_classifier.data.sizes import image_hw, size_name  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_img_size_arg(p, "image size S or H W, divisible by --downsample; the bank is (N, C, S/f, S/f) or (N, C, H/f, W/f)",
                     default=512)
    p.add_argument("--channels", type=positive_int, default=4, help="latent channels (4 for SD and DiT, 3 for pixel-space tiny models)")
    p.add_argument("--downsample", type=positive_int, default=8, help="VAE downsampling factor f (1 for pixel-space models)")
    p.add_argument("--n", type=positive_int, default=REFERENCE_ROWS, help="number of noise rows")
    p.add_argument("--seed", type=seed_int, default=REFERENCE_SEED, help="seed")
    p.add_argument("--out", type=Path, default=None, help="output file; not given: noise_<S or HxW>.pt in the working directory")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    if any(side % args.downsample for side in image_hw(args.img_size)):
        raise InputError(f"--img_size must be divisible by {args.downsample} (--downsample), got {size_name(args.img_size)}")
    out = check_output_file(args.out or Path(f"noise_{size_name(args.img_size)}.pt"))  # before any work
    h, w = (side // args.downsample for side in image_hw(args.img_size))
    size = 4 * args.n * args.channels * h * w  # float32 bytes
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if size > memory:  # before torch tries (and its size calculation overflows, or the allocation fails)
        raise InputError(f"a bank of --n {args.n} x ({args.channels}, {h}, {w}) floats needs {size / 2**30:.3g} GiB, more "
                         f"than this machine's {memory / 2**30:.3g} GiB of memory: pass a smaller --n (the reference's "
                         f"is {REFERENCE_ROWS}), --channels or --img_size")
    noise = reference_noise(args.img_size, args.channels, args.downsample, args.n, args.seed)
    atomic_write_bytes(out, lambda f: torch.save(noise, f), flag="--out")
    print(f"saved {tuple(noise.shape)} noise (seed {args.seed}) to {out}")
    return out


if __name__ == "__main__":
    run_cli(main)
