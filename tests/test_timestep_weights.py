"""Learned timestep weights, temperature, re-scoring of records, and exact replay of schedules."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import load_script
from diffusion_classifier.calibration import expected_calibration_error
from diffusion_classifier.errors import InputError
from diffusion_classifier.records import save_record
from diffusion_classifier.schedules.statistical import Replay, stratified_timesteps
from diffusion_classifier.timestep_weights import fit_and_report, fit_weights, load_full_errors, predictions
from diffusion_classifier.weighting import load_weights


def write_records(folder, n=120, k=5, grid=40, band=(600, 800), seed=0, signal=0.1, noise=0.3, prune_one=False):
    """Synthetic full-evaluation records: only timesteps in `band` say which class is right; the others
    carry larger noise and no signal. Records in the stratified order, like statistical_classify writes."""
    g = torch.Generator().manual_seed(seed)
    ts = torch.tensor(stratified_timesteps(grid))
    in_band = (ts >= band[0]) & (ts < band[1])
    labels = torch.randint(0, k, (n,), generator=g)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        e = 1.0 + torch.randn(k, grid, generator=g) * noise * (1 + 2 * (~in_band).float())
        e[labels[i]] -= signal * in_band.float()
        e = e * 0.01  # errors differ between classes by far less than 1, as real ones do
        errors = {c: {"t": ts.clone(), "pred_errors": e[c].float()} for c in range(k)}
        if prune_one and i == 0:
            errors[1] = {"t": ts[:5].clone(), "pred_errors": e[1, :5].float()}
        pred = int(e.mean(1).argmin())
        save_record({"errors": errors, "pred": pred, "label": int(labels[i])}, folder / f"{i:03d}.pt")
    return labels


def test_weights_go_where_the_signal_is(tmp_path):
    write_records(tmp_path / "run")
    fe = load_full_errors(tmp_path / "run")
    for kind in ("bins", "poly"):
        w = fit_weights(fe, np.arange(len(fe.labels)), kind).weights
        assert float(w[600:800].mean()) > 3 * float(torch.cat([w[:600], w[800:]]).mean()), kind
        assert (w > 0).all()


def test_fit_report_prefers_learned_weights_on_held_out_data_and_calibrates(tmp_path):
    write_records(tmp_path / "run", n=200, signal=0.25)
    fe = load_full_errors(tmp_path / "run")
    chosen, rep = fit_and_report(fe, holdout=0.5)
    k = rep["kinds"]
    assert max(k["bins"]["heldout_top1"], k["poly"]["heldout_top1"]) > k["uniform"]["heldout_top1"] + 5
    assert rep["chosen"] in ("bins", "poly") and chosen.kind == rep["chosen"]
    best = k[rep["chosen"]]
    # the raw softmax of errors is nearly uniform although the classifier is mostly right: far from calibrated
    assert best["heldout_top1"] > 60 and best["heldout_ece_before"] > 30
    assert best["heldout_ece_after"] < best["heldout_ece_before"] / 2
    for r in k.values():  # the temperature minimises the held-out NLL, and τ = 1 was a candidate
        assert r["heldout_nll_after"] <= r["heldout_nll_before"] + 1e-9


def test_uniform_rescoring_reproduces_print_acc(tmp_path, capsys):
    write_records(tmp_path / "run", n=60, signal=0.3, noise=0.2)
    print_acc = load_script("scripts/print_acc.py")
    (tmp_path / "uniform.json").write_text(json.dumps({"weights": [1.0] * 1000}))
    out = print_acc.main([str(tmp_path / "run"), "--timestep_weights", str(tmp_path / "uniform.json"), "--probs"])[0]
    assert out["rescored_top1"] == pytest.approx(out["top1"])
    assert 30 < out["top1"] < 100  # a case where the accuracy is not trivial
    probs = torch.tensor(out["probs"])
    assert probs.shape == (60, 5) and torch.allclose(probs.sum(1), torch.ones(60, dtype=probs.dtype))
    assert "re-scored with" in capsys.readouterr().out


def test_fit_script_writes_weights_that_print_acc_uses(tmp_path):
    write_records(tmp_path / "run", n=160)
    fit = load_script("scripts/fit_timestep_weights.py")
    res = fit.main([str(tmp_path / "run"), "--out", str(tmp_path / "w.json")])
    w = load_weights(tmp_path / "w.json", 1000)
    assert w.kind == res["chosen"] and w.temperature > 0
    fe = load_full_errors(tmp_path / "run")
    acc_w = float((predictions(fe, w) == fe.labels).double().mean())
    assert acc_w > float((predictions(fe) == fe.labels).double().mean())
    out = load_script("scripts/print_acc.py").main([str(tmp_path / "run"), "--timestep_weights", str(tmp_path / "w.json"), "--no_table"])
    assert out[0]["rescored_top1"] == pytest.approx(100 * acc_w)


def test_pruned_records_are_refused_for_weights(tmp_path):
    write_records(tmp_path / "run", n=4, prune_one=True)
    with pytest.raises(InputError, match="full evaluation"):
        load_full_errors(tmp_path / "run")


@pytest.mark.parametrize("errors,found", [({}, "no candidates"), ([1, 2], "list"),
                                           ({0: {"t": torch.tensor([1, 2])}}, "candidate 0 without tensors"),
                                           ({0: {"t": torch.tensor([1, 2]), "pred_errors": torch.ones(3)}},
                                            r"candidate 0 with \(2,\) timesteps and \(3,\) errors")])
def test_records_with_malformed_errors_are_one_line_errors(tmp_path, errors, found):
    """A record of another tool or run among full-evaluation records: an InputError naming it, never a traceback."""
    write_records(tmp_path / "run", n=4)
    save_record({"errors": errors, "pred": 0, "label": 0}, tmp_path / "run" / "000.pt")
    with pytest.raises(InputError, match=rf"000\.pt: expected 'errors' .*found {found}"):
        load_full_errors(tmp_path / "run")
    with pytest.raises(InputError, match=rf"000\.pt: expected 'errors' .*found {found}"):
        load_script("scripts/fit_timestep_weights.py").main([str(tmp_path / "run"), "--out", str(tmp_path / "w.json")])
    assert not (tmp_path / "w.json").exists()


def test_bad_weights_files(tmp_path):
    (tmp_path / "neg.json").write_text(json.dumps({"weights": [1.0, -1.0]}))
    with pytest.raises(InputError, match="positive"):
        load_weights(tmp_path / "neg.json")
    (tmp_path / "short.json").write_text(json.dumps({"weights": [1.0] * 10}))
    with pytest.raises(InputError, match="10 timesteps"):
        load_weights(tmp_path / "short.json", 1000)


def test_ece_of_perfect_and_overconfident_predictions():
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(torch.eye(2, dtype=torch.float64)[labels], labels) == pytest.approx(0.0)
    wrong = torch.eye(2, dtype=torch.float64)[1 - labels]
    assert expected_calibration_error(wrong, labels) == pytest.approx(100.0)


def test_replay_of_a_full_evaluation_matches_real_runs():
    """Statistical schedules replayed from a full evaluation's errors ask for its own (t, noise row) pairs
    and get the same predictions and evaluation counts as running the model."""
    from diffusion_classifier.data.registry import get_dataset
    from diffusion_classifier.data.transforms import dit_transform
    from diffusion_classifier.engine import Scorer
    from diffusion_classifier.families.dit import DIT_MODELS, load_class_conditional
    from diffusion_classifier.noise import make_noise
    from diffusion_classifier.schedules.statistical import statistical_classify

    model = load_class_conditional(DIT_MODELS["tiny"])
    ds = get_dataset("digits_c", ".", "test", dit_transform(model.native_size), corruption="gaussian_noise", severity=3)
    latents = model.encode_images(torch.stack([ds[i][0] for i in (0, 5, 9)]))
    grid = 32
    noise = make_noise(grid, model.latent_shape(model.native_size), 0)
    scorer = Scorer(model.denoiser, model.alphas_cumprod, noise, "cpu", torch.float32, 256)
    conds = torch.arange(10)

    def run(**kw):
        count = {"n": 0}

        def evaluate(jobs):
            count["n"] += len(jobs)
            return scorer.evaluate(latents, conds, jobs)

        return statistical_classify(evaluate, 3, 10, max_samples=grid, **kw), count["n"]

    full, n_full = run(min_samples=grid)
    assert n_full == 3 * 10 * grid
    t = full[0].errors[0]["t"]
    order = torch.argsort(t)
    errors = torch.stack([torch.stack([r.errors[c]["pred_errors"][order] for c in range(10)]) for r in full])
    for kw in ({"delta": 0.3, "min_samples": 4}, {"z": 1.5, "min_samples": 4},
               {"delta": 0.3, "min_samples": 4, "variance": "stratified"}):
        real, n_real = run(**kw)
        ev = Replay.stratified(errors, t[order])
        replayed = statistical_classify(ev, 3, 10, max_samples=grid, **kw)
        assert [r.pred for r in replayed] == [r.pred for r in real]
        assert [r.survivors for r in replayed] == [r.survivors for r in real]
        assert ev.evaluations == n_real
        for a, b in zip(real, replayed):
            for c in a.errors:
                torch.testing.assert_close(a.errors[c]["pred_errors"], b.errors[c]["pred_errors"], rtol=1e-5, atol=1e-6)
    # a reference-style schedule asks for other noise rows: the strict replay refuses it
    from diffusion_classifier.schedules.staged import adaptive_classify

    with pytest.raises(InputError, match="noise row"):
        adaptive_classify(Replay.stratified(errors, t[order]), 3, 10, [2, 1], [8, grid])
