"""Start-up: the digits path reads scikit-learn's CSV without importing scikit-learn, same arrays."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_digits_arrays_equal_scikit_learns():
    from sklearn.datasets import load_digits

    from diffusion_classifier.data.digits import read_digits_csv

    images, labels = read_digits_csv()
    ref = load_digits()
    assert np.array_equal(images, ref.images) and images.dtype == ref.images.dtype
    assert np.array_equal(labels, ref.target)


@pytest.mark.slow  # launches a script as a separate process
def test_digits_run_does_not_import_scikit_learn():
    code = ("import sys, eval_prob_adaptive; from diffusion_classifier.data.digits import DigitsDataset; "
            "ds = DigitsDataset('test'); assert len(ds) == 359; print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'sklearn', 'scipy'}))")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
