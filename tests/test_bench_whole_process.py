"""benchmarks/whole_process.py: our script at its defaults vs the re-created reference script."""
import json
import math
import shlex

import pytest

from conftest import load_script
from diffusion_classifier.schedules.staged import n_evaluations

whole_process = load_script("benchmarks/whole_process.py")


@pytest.mark.slow  # launches both scripts as separate processes
def test_whole_process_mode_agrees_and_times_both(tmp_path):
    out_path = tmp_path / "whole.json"
    argv = ["--model", "tiny", "--n_images", "3", "--to_keep", "2", "1", "--n_samples", "2", "4", "--repeats", "1",
            "--threads", "1", "--work_dir", str(tmp_path / "runs"), "--json", str(out_path)]
    out = whole_process.main(argv)
    saved = json.loads(out_path.read_text())
    evaluations = 3 * n_evaluations(10, [2, 1], [2, 4])
    assert saved["evaluations"] == out["evaluations"] == evaluations
    # the command is the reference's: no packing or speed flags, only the reference's own
    assert "--batch_size" not in saved["command"] and "--image_batch" not in saved["command"]
    assert saved["same_predictions"] == 3
    assert saved["errors_compared"] == evaluations  # every error of both runs was paired with the other's
    assert saved["max_abs_diff"] < 1e-4
    ours, ref = saved["times_s"]["ours"], saved["times_s"]["reference"]
    assert len(ours) == len(ref) == 1 and min(ours + ref) > 0
    assert math.isfinite(saved["speedup"]) and saved["speedup"] == pytest.approx(ref[0] / ours[0])
    cpu = saved["cpu_times_s"]
    assert min(cpu["ours"] + cpu["reference"]) > 0
    assert saved["cpu_time_ratio"] == pytest.approx(cpu["reference"][0] / cpu["ours"][0])
    # both wrote one record per image
    assert len(list((tmp_path / "runs" / "ref0").glob("*.pt"))) == 3
    assert len(list((tmp_path / "runs" / "ours0").rglob("*.pt"))) == 3
    assert saved["provenance"]["command"].endswith("python benchmarks/whole_process.py " + shlex.join(argv))
