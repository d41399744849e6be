"""Write a Winoground-format set from the digits test split: two digits, two captions, two images per example."""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusion_classifier.data.digits import load_digits_arrays  # noqa: E402
from diffusion_classifier.data.prompts import dataset_prompts  # noqa: E402
from diffusion_classifier.data.winoground import write_winoground  # noqa: E402
from diffusion_classifier.cli import positive_int, seed_int  # noqa: E402
from diffusion_classifier.cli import run as run_cli  # noqa: E402
from diffusion_classifier.records import check_writable  # noqa: E402

TAG = "Object"


def digit_pairs(labels: np.ndarray, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """n draws of (a, b, index of an image of a, index of an image of b) with digits a != b, seeded."""
    rng = np.random.default_rng(seed)
    by_digit = {d: np.flatnonzero(labels == d) for d in range(10)}
    pairs = []
    for _ in range(n):
        a, b = (int(d) for d in rng.choice(10, size=2, replace=False))
        pairs.append((a, b, int(rng.choice(by_digit[a])), int(rng.choice(by_digit[b]))))
    return pairs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for examples.jsonl and images/")
    parser.add_argument("--n", type=positive_int, default=200, help="number of examples")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the digit and image draws")
    parser.add_argument("--zip", action="store_true", help="store the images as images.zip instead of images/")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)  # each flag's range is checked here
    check_writable(args.out, "--out")  # a file in the way fails before any work
    images, labels = load_digits_arrays("test")  # (N, 8, 8) uint8, (N,)
    table = dataset_prompts("digits")  # "a photo of the number: 'd'.", the prompts of the digits classifier
    captions = {}
    for prompt, d in zip(table.prompts, table.classidx):
        captions.setdefault(d, prompt)
    records, pngs = [], {}
    for i, (a, b, ia, ib) in enumerate(digit_pairs(labels, args.n, args.seed)):
        names = [f"ex_{i}_img_0", f"ex_{i}_img_1"]
        for name, idx in zip(names, (ia, ib)):
            pngs[name] = Image.fromarray(images[idx]).convert("RGB")
        records.append({"id": i, "caption_0": captions[a], "caption_1": captions[b], "tag": TAG, "secondary_tag": "",
                        "num_main_preds": 1, "collapsed_tag": TAG, "image_0": names[0], "image_1": names[1],
                        "digits": [a, b], "test_indices": [ia, ib]})
    write_winoground(args.out, records, pngs, zip_images=args.zip)
    print(f"{args.out}: {len(records)} examples from the digits test split (seed {args.seed})")


if __name__ == "__main__":
    run_cli(main)
