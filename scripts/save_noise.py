"""Save a fixed noise bank: torch.randn(1024, 4, S/8, S/8) seeded with 42, as the reference does."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diffusion_classifier.noise import REFERENCE_ROWS, REFERENCE_SEED, reference_noise  # noqa: E402
from diffusion_classifier.records import atomic_write_bytes, check_output_file  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--img_size", type=int, default=512, help="image size; the bank is (N, C, S/f, S/f)")
    p.add_argument("--channels", type=int, default=4, help="latent channels (4 for SD and DiT, 3 for pixel-space tiny models)")
    p.add_argument("--downsample", type=int, default=8, help="VAE downsampling factor f (1 for pixel-space models)")
    p.add_argument("--n", type=int, default=REFERENCE_ROWS, help="number of noise rows")
    p.add_argument("--seed", type=int, default=REFERENCE_SEED, help="seed")
    p.add_argument("--out", type=Path, default=None, help="output file; default noise_<img_size>.pt")
    args = p.parse_args(argv)
    out = check_output_file(args.out or Path(f"noise_{args.img_size}.pt"))  # before any work
    noise = reference_noise(args.img_size, args.channels, args.downsample, args.n, args.seed)
    atomic_write_bytes(out, lambda f: torch.save(noise, f))
    print(f"saved {tuple(noise.shape)} noise (seed {args.seed}) to {out}")
    return out


if __name__ == "__main__":
    run_cli(main)
