"""Timestep weights shipped in a model folder: applied by default for their loss, recorded by digest, found again
for a run's probabilities, and paired with a temperature fitted on scores weighted the same way."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import load_script
from diffusion_classifier.calibration import load_calibration, load_record_scores, shipped_temperature, write_calibration
from diffusion_classifier.errors import InputError
from diffusion_classifier.records import MANIFEST, write_json
from diffusion_classifier.weighting import (NO_WEIGHTS, SHIPPED_FILE, TimestepWeights, resolve_weights, run_weights,
                                            weights_digest)


def tilted(T: int = 1000, loss: str | None = "l1", slope: float = 3.0) -> TimestepWeights:
    """Weights falling from e^slope at t = 0 to 1 at t = T-1 (mean not 1: nothing here depends on it)."""
    return TimestepWeights(torch.exp(torch.linspace(slope, 0.0, T, dtype=torch.float64)), "poly", 0.02, {}, loss)


def ship(folder, weights: TimestepWeights):
    folder.mkdir(parents=True, exist_ok=True)
    weights.save(folder / SHIPPED_FILE)
    return folder / SHIPPED_FILE


def test_shipped_weights_apply_by_default_only_for_their_loss(tmp_path):
    path = ship(tmp_path / "model", tilted(loss="l1"))
    w, digest = resolve_weights(None, tmp_path / "model", 1000, "l1")
    assert torch.equal(w.weights, tilted().weights) and w.loss == "l1" and digest == weights_digest(path)
    assert resolve_weights(None, tmp_path / "model", 1000, "l2") == (None, None)  # fitted on l1 errors
    assert resolve_weights(NO_WEIGHTS, tmp_path / "model", 1000, "l1") == (None, None)
    assert resolve_weights(None, "some-org/some-hub-model", 1000, "l1") == (None, None)
    assert resolve_weights(None, tmp_path / "elsewhere", 1000, "l1") == (None, None)
    other = tmp_path / "other.json"
    tilted(loss="l1", slope=1.0).save(other)  # a file given explicitly applies whatever its loss
    w, digest = resolve_weights(other, tmp_path / "model", 1000, "l2")
    assert digest == weights_digest(other) != weights_digest(path)
    with pytest.raises(InputError, match="the model has 20"):
        resolve_weights(None, tmp_path / "model", 20, "l1")
    tilted(loss=None).save(path)  # no loss recorded: any
    assert resolve_weights(None, tmp_path / "model", 1000, "log_l2")[0] is not None


def test_a_run_finds_the_weights_it_ranked_by_from_its_digest(tmp_path):
    model, run = tmp_path / "model", tmp_path / "run"
    path = ship(model, tilted())
    run.mkdir()
    write_json(run / MANIFEST, {"settings": {"model": str(model), "loss": "l1"}})
    assert run_weights(run) is None  # plain means
    write_json(run / MANIFEST, {"settings": {"model": str(model), "loss": "l1", "timestep_weights": weights_digest(path)}})
    assert torch.equal(run_weights(run).weights, tilted().weights)
    other = tmp_path / "other.json"
    tilted(slope=1.0).save(other)
    write_json(run / MANIFEST, {"settings": {"model": str(model), "loss": "l1", "timestep_weights": weights_digest(other)}})
    with pytest.raises(InputError, match="--timestep_weights"):
        run_weights(run)
    assert torch.equal(run_weights(run, [other]).weights, tilted(slope=1.0).weights)


def test_a_temperature_applies_only_to_scores_weighted_as_it_was_fitted(tmp_path):
    write_calibration(tmp_path, "l1", 0.01, {"settings": {"timestep_weights": "abc123"}})
    write_calibration(tmp_path, "l2", 0.002, {"settings": {}})
    assert shipped_temperature(tmp_path, "l1", None, "abc123") == 0.01
    assert shipped_temperature(tmp_path, "l1") is None  # fitted on weighted scores: not for plain means
    assert shipped_temperature(tmp_path, "l1", None, "ffffff") is None
    assert shipped_temperature(tmp_path, "l2") == 0.002 and shipped_temperature(tmp_path, "l2", None, "abc123") is None


def test_eval_prob_dit_applies_a_models_shipped_weights_and_calibrates_with_them(tmp_path, tiny_dit, capsys):
    model = shutil.copytree(tiny_dit, tmp_path / "model")
    path = ship(model, tilted(loss="l2", slope=4.0))
    digest = weights_digest(path)
    flags = ["--model", str(model), "--dataset", "digits", "--log_dir", str(tmp_path / "logs"), "--imgs_to_eval", "12",
             "--schedule", "statistical", "--delta", "0.2", "--to_keep", "1", "--n_samples", "12", "--no_progress"]
    dit = load_script("eval_prob_dit.py")
    weighted = dit.main(flags)["folder"]
    plain = dit.main(flags + ["--timestep_weights", "none"])["folder"]
    assert weighted.endswith(f"_tw{digest}") and "_tw" not in plain
    rs, raw = load_record_scores(weighted), load_record_scores(weighted, None)
    assert (rs.scores.argmin(1) == rs.preds).all()  # the records' scores are weighted as the run ranked
    assert not torch.allclose(rs.scores, raw.scores)
    # the loss the weights were not fitted for runs on plain means
    assert "_tw" not in dit.main(flags + ["--loss", "l1"])["folder"]

    out = load_script("scripts/calibrate.py").main([weighted, "--n_boot", "20"])
    entry = load_calibration(model)["l2"]
    assert entry["settings"]["timestep_weights"] == digest and entry["temperature"] == pytest.approx(out["temperature"])
    acc = load_script("scripts/print_acc.py")
    res = acc.main([weighted, "--probs", "--no_table"])[0]
    assert res["temperature"] == pytest.approx(out["temperature"]) and "timestep weights" in res["temperature_source"]
    assert torch.allclose(torch.tensor(res["probs"], dtype=torch.float64), rs.probabilities(out["temperature"]))
    res = acc.main([plain, "--probs", "--no_table"])[0]  # plain means: the weighted scores' temperature does not apply
    assert "uncalibrated" in res["temperature_source"]
    with pytest.raises(InputError, match="the held-out runs must share one --timestep_weights"):
        load_script("scripts/calibrate.py").main([weighted, plain, "--n_boot", "20"])
    path.unlink()  # the run's weights are gone: its probabilities cannot be scored as it ranked
    with pytest.raises(InputError, match=digest):
        acc.main([weighted, "--probs", "--no_table"])
    capsys.readouterr()


def test_the_api_applies_a_models_shipped_weights_for_their_loss(tmp_path, tiny_sd):
    from diffusion_classifier import DiffusionClassifier

    model = shutil.copytree(tiny_sd, tmp_path / "model")
    digest = weights_digest(ship(model, tilted(loss="l1", slope=4.0)))
    img = torch.rand(1, 3, 8, 8) * 2 - 1
    names = ["a", "b", "c"]
    clf = DiffusionClassifier.from_pretrained(str(model))
    p = clf.classify(img, names, n_samples=[6], loss="l1", img_size=8)[0]
    assert p.timestep_weights == digest
    w = tilted(slope=4.0).weights
    expected = torch.stack([(p.errors[c]["pred_errors"].double() * w[p.errors[c]["t"]]).mean() for c in range(3)])
    assert torch.allclose(p.scores.double(), expected, rtol=1e-5)  # full evaluation: the paired scores are the weighted means
    assert clf.classify(img, names, n_samples=[6], loss="l2", img_size=8)[0].timestep_weights is None
    plain = DiffusionClassifier.from_pretrained(str(model), timestep_weights=NO_WEIGHTS)
    q = plain.classify(img, names, n_samples=[6], loss="l1", img_size=8)[0]
    assert q.timestep_weights is None and torch.allclose(q.scores, q.mean_errors.to(q.scores), rtol=1e-5)
    write_calibration(model, "l1", 0.05, {"settings": {"timestep_weights": digest}})
    calibrated = DiffusionClassifier.from_pretrained(str(model))
    assert calibrated.classify(img, names, n_samples=[6], loss="l1", img_size=8)[0].calibrated
    assert not DiffusionClassifier.from_pretrained(str(model), timestep_weights=NO_WEIGHTS).classify(
        img, names, n_samples=[6], loss="l1", img_size=8)[0].calibrated


def test_every_shipped_models_weights_load_and_its_temperature_was_fitted_with_them():
    from diffusion_classifier.loading import TINY_MODELS

    shipped = sorted(TINY_MODELS.glob(f"*/{SHIPPED_FILE}"))
    assert shipped, "no tiny model ships timestep weights"
    for path in shipped:
        w, digest = resolve_weights(None, path.parent, 1000, "l1")
        assert w is not None and w.loss == "l1" and (w.weights > 0).all()
        entry = load_calibration(path.parent)[w.loss]
        assert entry["settings"].get("timestep_weights") == digest, f"{path.parent.name}: recalibrate with its weights"
        assert shipped_temperature(path.parent, w.loss, None, digest) == entry["temperature"]


def test_the_api_classifies_with_a_dit_as_eval_prob_dit_does(tmp_path, tiny_dit):
    from diffusion_classifier import DiffusionClassifier
    from diffusion_classifier.data.digits import DigitsDataset
    from diffusion_classifier.records import load_record

    model = shutil.copytree(tiny_dit, tmp_path / "model")
    digest = weights_digest(ship(model, tilted(loss="l1", slope=4.0)))
    run = load_script("eval_prob_dit.py").main(
        ["--model", str(model), "--dataset", "digits", "--log_dir", str(tmp_path / "logs"), "--imgs_to_eval", "3",
         "--schedule", "statistical", "--delta", "0.2", "--to_keep", "1", "--n_samples", "12", "--loss", "l1",
         "--no_progress"])
    assert run["folder"].endswith(f"_tw{digest}")
    load_script("scripts/calibrate.py").main([run["folder"], "--n_boot", "20"])
    clf = DiffusionClassifier.from_pretrained(str(model))
    assert clf.class_conditional
    ds = DigitsDataset("test")
    records = sorted(Path(run["folder"]).glob("*.pt"))
    rs = load_record_scores(run["folder"])
    assert rs.indices == [int(r.stem) for r in records] and len(records) == 3
    preds = clf.classify([ds[i][0] for i in rs.indices], list(range(10)), n_samples=[12], loss="l1",
                         schedule="statistical", delta=0.2)
    for i, (p, path) in enumerate(zip(preds, records)):
        rec = load_record(path)
        assert p.pred == rec["pred"] and sorted(p.errors) == sorted(rec["errors"])
        for c, e in rec["errors"].items():  # the same timesteps and noise, so the same errors
            assert torch.equal(p.errors[c]["t"], e["t"])
            assert torch.allclose(p.errors[c]["pred_errors"].float(), e["pred_errors"].float(), rtol=1e-4, atol=1e-6)
        assert torch.allclose(p.scores.double(), rs.scores[i].double(), rtol=1e-4)  # weighted as the run ranked
        assert p.timestep_weights == digest and p.calibrated
    by_name = clf.classify([ds[0][0]], ["class3", "CLASS7", 1], n_samples=[4], loss="l1")[0]
    assert by_name.probs.shape == (3,)
    for bad, what in ((["class3", "dog"], "not a class"), ([3, 10], "outside"), ([2.5], "class labels or names")):
        with pytest.raises(InputError, match=what):
            clf.classify([ds[0][0]], bad, n_samples=[4])


def test_a_run_made_in_another_checkout_finds_the_weights_shipped_here(tmp_path):
    from diffusion_classifier.loading import TINY_MODELS
    from diffusion_classifier.weighting import load_weights

    real = TINY_MODELS / "fashion-dit" / SHIPPED_FILE
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / MANIFEST, {"settings": {"model": "/another/checkout/diffusion_classifier/tiny_models/fashion-dit",
                                             "loss": "l1", "timestep_weights": weights_digest(real)}})
    assert torch.equal(run_weights(run).weights, load_weights(real).weights)
    write_json(run / MANIFEST, {"settings": {"model": "/another/checkout/models/fashion-dit", "loss": "l1",
                                             "timestep_weights": weights_digest(real)}})
    with pytest.raises(InputError, match="--timestep_weights"):  # not a shipped model: nothing to map it to
        run_weights(run)
