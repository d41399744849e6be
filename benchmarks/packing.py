"""CPU seconds of eval_prob_adaptive's main() per packing (batch size / images per call), interleaved.

Chooses the automatic packing (diffusion_classifier/packing.py). Same images, noise and schedule
for every setting; every setting gives the same predictions. CPU time of the process is reported
beside wall time because it is much less hit by other load on a shared machine.

    OMP_NUM_THREADS=1 python benchmarks/packing.py --n_images 32 --repeats 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lib import HelpFormatter, entry_script
from lib.results import write_result

SETTINGS = ["1/32", "16/128", "32/256", "16/256", "32/512"]  # images per call / batch size


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--n_images", type=int, default=32, help="first N digits test images")
    p.add_argument("--repeats", type=int, default=2, help="runs of every setting, interleaved")
    p.add_argument("--settings", nargs="+", default=SETTINGS, help="IMAGES/BATCH pairs")
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    eval_prob_adaptive = entry_script("eval_prob_adaptive")  # the script timed, in this process
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "subset.npy"
        np.save(subset, np.arange(args.n_images))
        base = ["--version", "tiny", "--dataset", "digits", "--split", "test", "--to_keep", "5", "1", "--n_samples",
                "10", "50", "--no_progress", "--subset_path", str(subset)]
        res = {s: {"wall_s": [], "cpu_s": []} for s in args.settings}
        for rep in range(args.repeats):
            for k, setting in enumerate(args.settings):
                ib, b = setting.split("/")
                t, c = time.perf_counter(), time.process_time()
                eval_prob_adaptive.main(base + ["--image_batch", ib, "--batch_size", b,
                                                "--log_dir", str(Path(tmp) / f"{rep}_{k}")])
                res[setting]["wall_s"].append(time.perf_counter() - t)
                res[setting]["cpu_s"].append(time.process_time() - c)
                print(f"{setting:>8}: {res[setting]['cpu_s'][-1]:.2f} s CPU, {res[setting]['wall_s'][-1]:.2f} s wall",
                      flush=True)
    if args.json:
        write_result(args.json, {"n_images": args.n_images, "settings": res}, __file__, argv)
    return res


if __name__ == "__main__":
    main()
