"""Paired scores of pruned candidates, the temperature fitted on held-out records, and the shipped calibration file."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script
from diffusion_classifier.calibration import (
    UNCALIBRATED_TEMPERATURE, RecordScores, bootstrap_interval, class_logits, expected_calibration_error,
    fit_calibration, load_calibration, load_record_scores, nll, reliability_bins, resolve_offsets, shipped_offsets,
    shipped_temperature, summary, temperature_for, write_calibration)
from diffusion_classifier.class_offsets import ClassOffsets, candidates_digest
from diffusion_classifier.errors import InputError, UserError
from diffusion_classifier.records import read_manifest_settings, save_record
from diffusion_classifier.schedules.staged import adaptive_classify, paired_scores
from diffusion_classifier.schedules.statistical import statistical_classify


def test_a_candidate_dropped_on_easy_timesteps_scores_above_the_winner():
    # errors grow with t; candidate 1 is worse by 0.05 everywhere but was only evaluated at t=100
    base = lambda t: torch.tensor(t, dtype=torch.float64) / 1000  # noqa: E731
    ts = [100, 900, 500, 300]
    errors = {0: {"t": torch.tensor(ts), "pred_errors": base(ts)},
              1: {"t": torch.tensor(ts[:1]), "pred_errors": base(ts[:1]) + 0.05}}
    naive = [float(errors[c]["pred_errors"].mean()) for c in (0, 1)]
    assert naive[1] < naive[0]  # the artefact: its own mean says it is the better one
    s = paired_scores(errors, 3)
    assert s[0] == pytest.approx(naive[0]) and s[1] == pytest.approx(naive[0] + 0.05)
    assert math.isinf(s[2])  # never evaluated


def test_repeated_timesteps_pair_by_occurrence():
    t = torch.tensor([7, 7, 3, 3])
    e0 = torch.tensor([1.0, 2.0, 3.0, 4.0])
    errors = {0: {"t": t, "pred_errors": e0}, 1: {"t": t[:2], "pred_errors": torch.tensor([1.5, 1.5])}}
    # pairs: (7, 1st) 1.5 - 1.0, (7, 2nd) 1.5 - 2.0 -> mean difference 0
    assert paired_scores(errors, 2)[1] == pytest.approx(float(e0.mean()))


def additive_evaluator(offsets, gen_seed=0):
    """errors = g(t) + offset of the candidate: paired scores are exact whatever the schedule drops."""
    def evaluate(jobs):
        return (jobs.t.double() / 1000) ** 2 + torch.as_tensor(offsets, dtype=torch.float64)[jobs.cond]
    return evaluate


@pytest.mark.parametrize("schedule", ["staged", "statistical"])
def test_paired_scores_recover_every_candidates_full_mean(schedule):
    offsets = [0.0, 0.003, 0.01, 0.02, 0.2]
    ev = additive_evaluator(offsets)
    if schedule == "staged":
        r = adaptive_classify(ev, 1, 5, [3, 1], [4, 40])[0]
    else:
        noisy = lambda jobs: ev(jobs) + 0.002 * torch.randn(len(jobs.t), generator=torch.Generator().manual_seed(int(jobs.t.sum())), dtype=torch.float64)  # noqa: E501,E731
        r = statistical_classify(noisy, 1, 5, max_samples=100, delta=0.05)[0]
        ev = noisy
    lens = {c: len(r.errors[c]["t"]) for c in r.errors}
    assert len(set(lens.values())) > 1  # some candidates were dropped early
    lead = max(lens, key=lens.get)
    t_lead = r.errors[lead]["t"].double()
    full = [float(((t_lead / 1000) ** 2).mean()) + o for o in offsets]
    s = r.scores(5)
    if schedule == "staged":  # no noise: exact
        torch.testing.assert_close(s, torch.tensor(full, dtype=torch.float64))
    else:  # the order is the offsets' order, and the paired scores are close to the full means
        assert torch.argsort(s).tolist() == [0, 1, 2, 3, 4]
        assert float((s - torch.tensor(full, dtype=torch.float64)).abs().max()) < 0.002
    assert int(torch.argmin(s)) == r.pred


def test_temperature_recovers_the_one_that_made_the_labels():
    g = torch.Generator().manual_seed(0)
    n, k, tau0 = 4000, 6, 0.02
    s = torch.rand(n, k, generator=g, dtype=torch.float64) * 0.1
    labels = torch.multinomial(torch.softmax(-s / tau0, 1), 1, generator=g)[:, 0]
    tau = temperature_for(s + 5.0, labels, list(range(k)))  # a shift of every score changes nothing
    assert tau == pytest.approx(tau0, rel=0.1)
    # the fitted temperature is calibrated, one far too small is not
    p, p_sharp = torch.softmax(-s / tau, 1), torch.softmax(-s / 1e-4, 1)
    assert expected_calibration_error(p, labels) < 3 < expected_calibration_error(p_sharp, labels)
    assert nll(p, labels) < nll(p_sharp, labels)


def test_class_offsets_recover_a_bias_no_temperature_can():
    # labels drawn from softmax(-s / tau0 + b0): class 0's prompt makes denoising look easier than it is (its errors
    # are low whatever the image), class 3's harder; two prompts of class 2 (candidates 2 and 3)
    g = torch.Generator().manual_seed(2)
    n, tau0 = 6000, 0.02
    cc = [0, 1, 2, 2, 3]
    b0 = torch.tensor([-1.5, 0.0, 0.5, 1.0], dtype=torch.float64)
    s = torch.rand(n, 5, generator=g, dtype=torch.float64) * 0.1
    logits = class_logits(-s / tau0, cc, torch.zeros(1, dtype=torch.long)) + b0
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g)[:, 0]
    tau, off = fit_calibration(s + 3.0, labels, cc, offsets=True)
    assert tau == pytest.approx(tau0, rel=0.1)
    assert float(off.sum()) == pytest.approx(0.0, abs=1e-9)  # only differences between classes are identified
    torch.testing.assert_close(off, b0 - b0.mean(), atol=0.15, rtol=0)
    # without offsets: the temperature of temperature_for, and a worse fit that no temperature mends
    tau_only, none = fit_calibration(s, labels, cc)
    assert none is None and tau_only == pytest.approx(temperature_for(s, labels, cc), rel=1e-6)
    rs = RecordScores(s, labels, s.argmin(1), list(range(n)), cc, torch.full((n,), 5))
    p_off, p_tau = rs.probabilities(tau, off), rs.probabilities(tau_only)
    assert nll(p_off, labels) < nll(p_tau, labels) - 0.02
    assert expected_calibration_error(p_off, labels) < expected_calibration_error(p_tau, labels)
    assert summary(rs, tau, n_boot=20, offsets=off)["nll"] == pytest.approx(nll(p_off, labels))


@pytest.mark.parametrize("schedule", ["staged", "statistical"])
def test_a_class_shift_moves_the_answer_and_a_common_one_changes_nothing(schedule):
    offsets = [0.0, 0.003, 0.01, 0.02, 0.2]

    def evaluate(jobs):
        g = torch.Generator().manual_seed(int(jobs.t.sum()))
        return additive_evaluator(offsets)(jobs) + 0.001 * torch.randn(len(jobs.t), generator=g, dtype=torch.float64)

    def classify(shift=None):
        if schedule == "staged":
            return adaptive_classify(evaluate, 1, 5, [3, 1], [10, 40], shift=shift)[0]
        return statistical_classify(evaluate, 1, 5, max_samples=100, delta=0.05, epsilon=0.01, shift=shift)[0]

    plain, common = classify(), classify(torch.full((5,), 0.5, dtype=torch.float64))
    assert plain.pred == 0 and common.pred == 0 and common.survivors == plain.survivors
    assert {c: len(e["t"]) for c, e in common.errors.items()} == {c: len(e["t"]) for c, e in plain.errors.items()}
    # class 0 pushed 0.01 above class 1 (which is 0.003 worse): class 1 wins, and the records keep the raw errors
    moved = classify(torch.tensor([0.01, 0, 0, 0, 0], dtype=torch.float64))
    assert moved.pred == 1
    assert float(moved.errors[1]["pred_errors"].mean()) == pytest.approx(0.003 + float(
        ((moved.errors[1]["t"].double() / 1000) ** 2).mean()), abs=1e-3)


def test_a_shift_of_the_scores_is_the_offsets_added_to_the_logits():
    g = torch.Generator().manual_seed(0)
    cc = [0, 0, 1, 2, 2, 3]
    s = torch.rand(50, 6, generator=g, dtype=torch.float64) * 0.01
    labels = torch.randint(0, 4, (50,), generator=g)
    co = ClassOffsets(0.002, torch.tensor([-1.0, 0.5, 0.2, 0.3], dtype=torch.float64))
    shift = co.shift(cc)
    torch.testing.assert_close(shift, torch.tensor([0.002, 0.002, -0.001, -0.0004, -0.0004, -0.0006],
                                                   dtype=torch.float64))
    raw = RecordScores(s, labels, s.argmin(1), list(range(50)), cc, torch.full((50,), 6))
    moved = RecordScores(s + shift, labels, s.argmin(1), list(range(50)), cc, torch.full((50,), 6))
    torch.testing.assert_close(moved.probabilities(co.temperature), raw.probabilities(co.temperature, co.offsets))
    assert co.setting(cc) == {"temperature": 0.002, "shift": shift.tolist()}
    assert torch.equal(ClassOffsets(0.002, co.offsets).shift([5, 0]), torch.tensor([0.0, 0.002], dtype=torch.float64))


def test_shipped_offsets_apply_to_their_candidates_loss_and_weights_only(tmp_path):
    cands = [["a photo of a cat.", 0], ["a photo of a dog.", 1]]
    co = ClassOffsets(0.02, torch.tensor([0.4, -0.4], dtype=torch.float64), candidates_digest(cands))
    write_calibration(tmp_path, "l1", 0.01, {"settings": {"error_space": "eps"}}, co)
    assert shipped_temperature(tmp_path, "l1") == 0.01  # the temperature alone is kept beside them
    found = shipped_offsets(tmp_path, "l1", "eps", None, cands)
    assert found.temperature == 0.02 and torch.equal(found.offsets, co.offsets)
    assert candidates_digest([tuple(r) for r in cands]) == co.candidates  # JSON's view: tuples are lists
    assert shipped_offsets(tmp_path, "l1", "eps", None, [["a cat.", 0], ["a dog.", 1]]) is None  # other prompts
    assert shipped_offsets(tmp_path, "l2", "eps", None, cands) is None
    assert shipped_offsets(tmp_path, "l1", "native", None, cands) is None
    assert shipped_offsets(tmp_path, "l1", "eps", "0123456789", cands) is None  # other timestep weights
    assert resolve_offsets(None, tmp_path, "l1", "eps", None, cands) is not None
    assert resolve_offsets("none", tmp_path, "l1", "eps", None, cands) is None
    with pytest.raises(InputError, match="shipped"):
        resolve_offsets("mine", tmp_path, "l1", "eps", None, cands)
    assert shipped_offsets("some/hub-id", "l1", None, None, cands) is None
    raw = json.loads((tmp_path / "calibration.json").read_text())
    raw["temperatures"]["l1"]["class_offsets"]["offsets"] = [0.4, float("nan")]
    (tmp_path / "calibration.json").write_text(json.dumps(raw))
    with pytest.raises(InputError, match="finite offsets"):
        load_calibration(tmp_path)
    raw["temperatures"]["l1"]["class_offsets"] = {"offsets": [1.0]}
    (tmp_path / "calibration.json").write_text(json.dumps(raw))
    with pytest.raises(InputError, match="expected class_offsets"):
        load_calibration(tmp_path)


def test_candidates_of_one_class_share_its_probability():
    s = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0])
    tau = temperature_for(s.repeat(50, 1), labels.repeat(50), [0, 0, 1])
    assert tau > 0  # two prompts of class 0 against one of class 1: fitted through class log-sum-exp


def test_bootstrap_and_reliability_bins():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(500, 4, generator=g) * 2, 1).double()
    y = torch.multinomial(p, 1, generator=g)[:, 0]
    bins = reliability_bins(p, y, 10)
    assert sum(b["count"] for b in bins) == 500
    assert all(b["lo"] < b["confidence"] <= b["hi"] for b in bins)
    lo, hi = bootstrap_interval(expected_calibration_error, p, y, 200)
    assert lo <= expected_calibration_error(p, y) <= hi and hi > lo


def test_calibration_file_keeps_each_loss(tmp_path):
    write_calibration(tmp_path, "l1", 0.01, {"n_images": 10})
    write_calibration(tmp_path, "l2", 0.002, {"n_images": 12})
    write_calibration(tmp_path, "l1", 0.03, {"n_images": 20})
    cal = load_calibration(tmp_path)
    assert set(cal) == {"l1", "l2"} and cal["l1"]["n_images"] == 20
    assert shipped_temperature(tmp_path, "l1") == 0.03 and shipped_temperature(tmp_path, "log_l2") is None
    assert load_calibration("some-org/some-hub-model") == {} and shipped_temperature(None, "l2") is None
    # a flow model's temperature fitted on ε-space errors is not applied to its velocity errors
    write_calibration(tmp_path, "l2", 0.002, {"settings": {"error_space": "eps"}})
    assert shipped_temperature(tmp_path, "l2", "eps") == shipped_temperature(tmp_path, "l2") == 0.002
    assert shipped_temperature(tmp_path, "l2", "native") is None
    assert shipped_temperature(tmp_path, "l1", "native") == 0.03  # recorded without an error space: any
    (tmp_path / "calibration.json").write_text(json.dumps({"temperatures": {"l2": {"temperature": -1}}}))
    with pytest.raises(InputError, match="positive"):
        load_calibration(tmp_path)
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(InputError, match="calibration file"):
        load_calibration(tmp_path)


def test_records_of_any_schedule_give_paired_probabilities(tmp_path):
    ts = torch.tensor([500, 100, 900, 300])
    for i, label in enumerate([0, 1, 0]):
        e = torch.stack([ts.float() / 1000 + 0.01 * (c != label) for c in range(3)])
        errors = {c: {"t": ts[: 4 if c == label else 1], "pred_errors": e[c, : 4 if c == label else 1]} for c in range(3)}
        save_record({"errors": errors, "pred": label, "label": label}, tmp_path / f"{i}.pt")
    rs = load_record_scores(tmp_path)
    assert rs.evaluations.tolist() == [6, 6, 6]
    p = rs.probabilities(0.01)
    assert (p.argmax(1) == rs.labels).all()
    assert torch.allclose(p[0], torch.softmax(torch.tensor([0.0, -1.0, -1.0], dtype=p.dtype), 0))

    picked = rs.select([2, 0])
    assert picked.indices == [2, 0] and torch.equal(picked.scores, rs.scores[[2, 0]])
    with pytest.raises(InputError, match="no record"):
        rs.select([0, 7])
    both = RecordScores.cat([rs, picked])
    assert both.indices == [0, 1, 2, 2, 0] and torch.equal(both.labels, torch.tensor([0, 1, 0, 0, 0]))
    other = RecordScores(rs.scores[:, :2], rs.labels, rs.preds, rs.indices, [0, 1], rs.evaluations)
    with pytest.raises(InputError, match="different candidates"):
        RecordScores.cat([rs, other])


def crafted_run(folder: Path, labels=(0, 1, 0, 1, 2, 2), k: int = 3, **settings) -> Path:
    """A run folder of full-evaluation records (the label's candidate 0.01 lower) and a manifest of `settings`."""
    ts = torch.tensor([500, 100, 900, 300])
    folder.mkdir(parents=True)
    for i, label in enumerate(labels):
        errors = {c: {"t": ts, "pred_errors": ts.float() / 1000 + 0.01 * (c != label)} for c in range(k)}
        save_record({"errors": errors, "pred": label, "label": label}, folder / f"{i}.pt")
    prompts = [[f"p{c}", c] for c in range(k)]
    (folder / "manifest.json").write_text(json.dumps({"settings": {"model": "m", "loss": "l2", "prompts": prompts,
                                                                   **settings}}))
    return folder


@pytest.mark.parametrize("manifest,found", [
    ('{"settings": {"loss": "l', r"manifest\.json is not valid JSON \(JSONDecodeError"),
    ("[1]", r"expected a run manifest .*found a JSON list"),
    ('{"settings": 5}', r"expected a run manifest .*found settings 5"),
    ('{"settings": {"loss": ["l2"]}}', r"expected a run manifest .*found loss \[\"l2\"\]"),
    ('{"settings": {"prompts": [["p0"], ["p1"], ["p2"]]}}', r"expected the manifest's prompts as \[prompt, classidx\] rows"),
    ('{"settings": {"class_offsets": {"shift": [0, 0, 0]}}}', r"expected the manifest's class_offsets as"),
])
def test_a_malformed_manifest_is_a_one_line_error_for_the_readers(tmp_path, capsys, manifest, found):
    """print_acc --probs and calibrate.py read a run's settings from its manifest: a malformed one is never guessed."""
    run = crafted_run(tmp_path / "run")
    (run / "manifest.json").write_text(manifest)
    with pytest.raises(InputError, match=found):
        load_record_scores(run)
    with pytest.raises(InputError, match=found):
        load_script("scripts/print_acc.py").main([str(run), "--probs"])
    (run / "manifest.json").unlink()  # a run without a manifest (the reference's) is read with plain settings
    assert load_script("scripts/print_acc.py").main([str(run), "--probs"])[0]["temperature"] == UNCALIBRATED_TEMPERATURE


def test_calibrate_checks_its_check_runs_before_writing(tmp_path, capsys):
    """--check runs of another loss, model or candidates (or none at all) are refused before the file is written."""
    held = crafted_run(tmp_path / "held")
    out = tmp_path / "calibration.json"
    calibrate = load_script("scripts/calibrate.py").main
    cases = [(crafted_run(tmp_path / "l1", loss="l1"), [], r"--check .*l1: expected a run of the held-out runs' --loss "
                                                           r"l2, found --loss l1"),
             (crafted_run(tmp_path / "other", model="n"), [], r"--model m, found --model n"),
             (crafted_run(tmp_path / "four", labels=(0, 1, 2, 3), k=4), ["--class_offsets"],
              r"--check .*four: expected a run of the held-out runs' candidates"),
             (tmp_path / "missing", [], r"run folder .*missing does not exist")]
    for check, extra, pattern in cases:
        with pytest.raises(UserError, match=pattern):
            calibrate([str(held), "--out", str(out), "--n_boot", "5", "--check", str(check), *extra])
        assert not out.exists()
    res = calibrate([str(held), "--out", str(out), "--n_boot", "5", "--check", str(tmp_path / "four")])
    assert out.is_file() and res["checks"][str(tmp_path / "four")]["n"] == 4  # other prompts: the temperature applies


def test_calibrate_script_ships_a_temperature_the_api_and_print_acc_apply(tmp_path, tiny_sd, capsys):
    from diffusion_classifier import DiffusionClassifier

    model = shutil.copytree(tiny_sd, tmp_path / "model")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,classname,classidx\n" + "".join(f"d{c},{c},{c}\n" for c in range(4)))
    from diffusion_classifier.data.digits import DigitsDataset

    ds = DigitsDataset("test")  # 24 test digits of classes 0..3
    idx = [i for i in range(len(ds)) if ds[i][1] < 4][:24]
    np.save(tmp_path / "subset.npy", np.array(idx))
    run = load_script("eval_prob_adaptive.py").main(
        ["--model", str(model), "--dataset", "digits", "--split", "test", "--prompt_path", str(prompts),
         "--subset_path", str(tmp_path / "subset.npy"), "--log_dir", str(tmp_path / "logs"), "--img_size", "8",
         "--schedule", "statistical", "--delta", "0.2", "--to_keep", "1", "--n_samples", "20", "--loss", "l1",
         "--no_progress"])
    out = load_script("scripts/calibrate.py").main([run["folder"], "--check", run["folder"], "--n_boot", "50",
                                                     "--plot", str(tmp_path / "rel.png")])
    tau = out["temperature"]
    assert tau > 0 and (tmp_path / "rel.png").stat().st_size > 0
    assert out["heldout"]["nll"] <= out["heldout_before"]["nll"] + 1e-9  # the fit minimises the held-out NLL
    assert shipped_temperature(model, "l1") == pytest.approx(tau) and shipped_temperature(model, "l2") is None
    res = load_script("scripts/print_acc.py").main([run["folder"], "--probs", "--no_table"])[0]
    assert res["temperature"] == pytest.approx(tau) and "shipped" in res["temperature_source"]
    assert "shipped with the model" in capsys.readouterr().out
    clf = DiffusionClassifier.from_pretrained(str(model))
    img = [ds[idx[0]][0]]
    names = [f"d{c}" for c in range(4)]
    p_l1 = clf.classify(img, names, n_samples=[4], loss="l1", img_size=8)[0]
    assert p_l1.calibrated and p_l1.temperature == pytest.approx(tau)
    p_l2 = clf.classify(img, names, n_samples=[4], loss="l2", img_size=8)[0]
    assert not p_l2.calibrated and p_l2.temperature == UNCALIBRATED_TEMPERATURE
    p_set = clf.classify(img, names, n_samples=[4], loss="l1", img_size=8, temperature=0.5)[0]
    assert not p_set.calibrated and torch.allclose(p_set.probs, torch.softmax(-p_set.scores / 0.5, 0).float())

    # class offsets fitted for these prompts apply to them, not to other wordings of the same classes
    flags = ["--model", str(model), "--dataset", "digits", "--split", "test", "--subset_path", str(tmp_path / "subset.npy"),
             "--log_dir", str(tmp_path / "logs"), "--img_size", "8", "--schedule", "statistical", "--delta", "0.2",
             "--to_keep", "1", "--n_samples", "20", "--loss", "l1", "--no_progress"]
    load_script("scripts/calibrate.py").main([run["folder"], "--class_offsets", "--offsets_only", "--n_boot", "20"])
    assert shipped_temperature(model, "l1") == pytest.approx(tau)
    with_offsets = load_script("eval_prob_adaptive.py").main(flags + ["--prompt_path", str(prompts)])
    assert "_co" in Path(with_offsets["folder"]).name and with_offsets["done"] == 24
    reworded = tmp_path / "reworded.csv"
    reworded.write_text("prompt,classname,classidx\n" + "".join(f"digit {c},{c},{c}\n" for c in range(4)))
    other = load_script("eval_prob_adaptive.py").main(flags + ["--prompt_path", str(reworded), "--extra", "reworded"])
    assert "_co" not in Path(other["folder"]).name and "class_offsets" not in read_manifest_settings(other["folder"])


def test_calibrate_ships_class_offsets_that_dit_runs_apply(tmp_path, tiny_dit, capsys):
    model = shutil.copytree(tiny_dit, tmp_path / "model")
    flags = ["--model", str(model), "--dataset", "digits", "--log_dir", str(tmp_path / "logs"), "--imgs_to_eval", "12",
             "--schedule", "statistical", "--delta", "0.2", "--to_keep", "1", "--n_samples", "12", "--no_progress"]
    run = load_script("eval_prob_dit.py").main(flags)
    rs = load_record_scores(run["folder"])
    assert rs.scores.shape == (12, 10) and torch.isfinite(rs.scores).all()
    assert (rs.scores.argmin(1) == rs.preds).all()  # the winner has the lowest paired score
    out = load_script("scripts/calibrate.py").main([run["folder"], "--n_boot", "20", "--check", run["folder"],
                                                     "--class_offsets"])
    assert shipped_temperature(model, "l2") == pytest.approx(out["temperature"])
    # one finite log-prior per class (classes no image is labelled with included), summing to 0, fitting the
    # held-out records at least as well as the temperature alone, written beside the temperature
    biased = out["class_offsets"]
    assert len(biased["offsets"]) == 10 and all(math.isfinite(b) for b in biased["offsets"])
    assert sum(biased["offsets"]) == pytest.approx(0.0, abs=1e-6)
    assert biased["summaries"]["heldout"]["nll"] <= out["heldout"]["nll"] + 1e-6
    assert biased["summaries"][str(run["folder"])]["nll"] == pytest.approx(biased["summaries"]["heldout"]["nll"])
    co = shipped_offsets(model, "l2", None, None, list(range(10)))
    assert co is not None and co.offsets.tolist() == pytest.approx(biased["offsets"])

    # the same command now applies them: a new run folder, the shift in its manifest, answers that are the most
    # probable class under the offsets; --class_offsets none is the first run (resumed: nothing recomputed)
    again = load_script("eval_prob_dit.py").main(flags)
    assert Path(again["folder"]).name == Path(run["folder"]).name + "_co" + Path(again["folder"]).name[-8:]
    assert again["done"] == 12
    shifted, raw = load_record_scores(again["folder"]), load_record_scores(again["folder"], shifted=False)
    torch.testing.assert_close(shifted.scores - raw.scores, co.shift(range(10)).expand(12, 10))
    assert (shifted.scores.argmin(1) == shifted.preds).all()
    torch.testing.assert_close(shifted.probabilities(co.temperature), raw.probabilities(co.temperature, co.offsets))
    assert load_script("eval_prob_dit.py").main(flags + ["--class_offsets", "none"])["skipped"] == 12
    res = load_script("scripts/print_acc.py").main([again["folder"], "--probs", "--no_table"])[0]
    assert res["temperature"] == pytest.approx(co.temperature) and "class offsets" in res["temperature_source"]
    # the API applies them to the same candidates: ranked and scored with the shift, at their temperature
    from diffusion_classifier import DiffusionClassifier

    clf = DiffusionClassifier.from_pretrained(str(model))
    img = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    p = clf.classify(img, list(range(10)), n_samples=[6])[0]
    torch.testing.assert_close(p.shift, co.shift(range(10)))
    assert p.calibrated and p.temperature == pytest.approx(co.temperature) and p.pred == int((p.scores + p.shift).argmin())
    torch.testing.assert_close(p.probs, torch.softmax(-(p.scores + p.shift) / co.temperature, 0).float())
    plain = clf.classify(img, list(range(10)), n_samples=[6], class_offsets="none")[0]
    assert plain.shift is None and plain.temperature == pytest.approx(out["temperature"])
    assert clf.classify(img, [1, 0, *range(2, 10)], n_samples=[6])[0].shift is None  # other candidates
    # refitting on runs that applied offsets would fit offsets on top of offsets
    with pytest.raises(InputError, match="applied class offsets"):
        load_script("scripts/calibrate.py").main([again["folder"], "--class_offsets"])
    kept = load_script("scripts/calibrate.py").main([run["folder"], "--class_offsets", "--offsets_only", "--n_boot", "20",
                                                      "--check", again["folder"]])
    assert kept["temperature"] == pytest.approx(out["temperature"])
    assert "with the class offsets its schedule applied" in capsys.readouterr().out
    with pytest.raises(InputError, match="--class_offsets"):
        load_script("eval_prob_dit.py").main(["--model", str(model), "--dataset", "digits", "--cls", "0",
                                              "--class_offsets", "none", "--log_dir", str(tmp_path / "logs")])
    # a temperature fitted again without --class_offsets drops offsets fitted on other runs
    load_script("scripts/calibrate.py").main([run["folder"], "--n_boot", "20"])
    assert "were fitted on other runs and are dropped" in capsys.readouterr().out
    assert shipped_offsets(model, "l2", None, None, list(range(10))) is None


def test_shipped_flow_temperature_applies_in_the_error_space_it_was_fitted_in():
    from diffusion_classifier import DiffusionClassifier
    from diffusion_classifier.families import SD_VERSIONS

    folder = SD_VERSIONS["fashion-flow"]
    cal = load_calibration(folder)
    assert cal["l1"]["settings"]["error_space"] == "eps"  # fitted with the flow default
    clf = DiffusionClassifier.from_pretrained("fashion-flow")
    img = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    names = ["a photo of a bag.", "a photo of a sandal."]
    p_eps = clf.classify(img, names, n_samples=[4], loss="l1")[0]
    assert p_eps.calibrated and p_eps.temperature == pytest.approx(cal["l1"]["temperature"])
    velocity = DiffusionClassifier(clf.model, error_space="native", calibration=clf.calibration)
    p_v = velocity.classify(img, names, n_samples=[4], loss="l1")[0]
    assert not p_v.calibrated and p_v.temperature == UNCALIBRATED_TEMPERATURE
    assert not torch.allclose(p_v.scores, p_eps.scores)  # the two spaces score differently


def test_the_shipped_class_offsets_apply_to_the_shipped_commands():
    # fashion-dit: its ten classes, --loss l1 with its shipped timestep weights; the shoe classes are pulled down
    from diffusion_classifier.loading import TINY_MODELS
    from diffusion_classifier.weighting import resolve_weights

    folder = TINY_MODELS / "fashion-dit"
    _, digest = resolve_weights(None, folder, loss="l1")
    co = resolve_offsets(None, folder, "l1", None, digest, list(range(10)))
    assert co is not None and len(co.offsets) == 10 and co.info["n_images"] >= 1000
    assert co.offsets[[5, 9]].max() < 0 < co.offsets[[0, 2, 8]].min()  # sandal, ankle boot; T-shirt, pullover, bag
    assert resolve_offsets(None, folder, "l1", None, None, list(range(10))) is None  # --timestep_weights none
    assert resolve_offsets(None, folder, "l2", None, digest, list(range(10))) is None
    assert shipped_temperature(folder, "l1", None, digest) != co.temperature  # the temperature alone is kept
    # fashion-flow: the shipped prompts with their classes, in ε-space (its default); not in velocity space
    from diffusion_classifier.data.prompts import read_prompts

    table = read_prompts(Path(__file__).parents[1] / "prompts" / "fashion_mnist_prompts.csv")
    cands = [list(r) for r in zip(table.prompts, table.classidx)]
    flow = TINY_MODELS / "fashion-flow"
    co = resolve_offsets(None, flow, "l1", "eps", None, cands)
    assert co is not None and int(co.offsets.argmin()) == 9  # ankle boot
    assert resolve_offsets(None, flow, "l1", "native", None, cands) is None
    assert resolve_offsets(None, flow, "l1", "eps", None, cands[::-1]) is None


def test_print_acc_refuses_records_of_other_scripts_instead_of_calling_them_unreadable(tmp_path):
    """A compositional item (pred and label too) or a per-class DiT record is not a classification record: one line
    naming it, not a count of 'unreadable' files or an accuracy over the items that happen to have numeric names."""
    print_acc = load_script("scripts/print_acc.py")
    errors = {0: {"t": torch.tensor([1]), "pred_errors": torch.tensor([0.5])}}
    for name, folder_records, pattern in [
        ("mixed", {"0.pt": {"errors": errors, "pred": 0, "label": 0},
                   "1.pt": {"errors": errors, "pred": 0, "label": 0, "captions": ["a", "b"], "kind": "text"}},
         r"1\.pt: expected a classification record .*\(an image-text matching record"),
        ("dit", {"000.pt": {"kind": "l2", "data": torch.zeros(2, 1), "t": torch.tensor([1, 2]), "cls": 3, "label": 0}},
         r"000\.pt: expected a classification record with 'errors', 'pred' and 'label' .*found \['cls', 'data'"),
        ("named", {"ir0.pt": {"errors": errors, "pred": 0, "label": 0}},
         r"holds no <index>\.pt records of a classification run \(found ir0\.pt\)"),
    ]:
        (tmp_path / name).mkdir()
        for file, record in folder_records.items():
            torch.save(record, tmp_path / name / file)
        with pytest.raises(InputError, match=pattern):
            print_acc.main([str(tmp_path / name)])
    (tmp_path / "mixed" / "1.pt").write_bytes(b"cut short")  # a truncated record is still skipped and counted
    assert print_acc.main([str(tmp_path / "mixed"), "--no_table"])[0]["unreadable"] == 1
