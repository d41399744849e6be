"""Compositional image-text matching: readers of every layout, the shared (t, ε) of text retrieval, the
null-normalised image choice, records, resume, per-task tables and one-line errors (run_compositional.py with
the shipped digits model)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, load_script
from diffusion_classifier import cli
from diffusion_classifier.data.compositional import (
    IMAGE,
    TEXT,
    read_aro,
    read_geneval,
    read_hf,
    read_jsonl,
    read_sugarcrepe,
    read_whatsup,
)
from diffusion_classifier.data.digits import DigitsDataset
from diffusion_classifier.data.transforms import sd_transform
from diffusion_classifier.engine import Jobs, Scorer, cat_conditions
from diffusion_classifier.errors import InputError
from diffusion_classifier.families import load_model, resolve_model
from diffusion_classifier.noise import make_noise
from diffusion_classifier.records import load_record
from diffusion_classifier.schedules.statistical import make_schedule
from diffusion_classifier.tasks.compositional import accuracy_tables, clip_item_scorer, diffusion_item_scorer, table_lines


def prompt(d) -> str:
    return f"a photo of the number: '{d}'."


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Six shipped digits (0..5) as PNG files, and tiny sets in every layout over them."""
    root = tmp_path_factory.mktemp("comp")
    digits = DigitsDataset("test")
    found = {}
    for i in range(200):
        image, label = digits[i]
        if label < 6 and label not in found:
            found[label] = image
    (root / "img").mkdir()
    for d, image in found.items():
        image.convert("RGB").save(root / "img" / f"{d}.png")
    # generic jsonl: three text-retrieval items over two tasks, two image-retrieval items
    lines = [
        {"image": "img/0.png", "captions": [prompt(0), prompt(1)], "label": 0, "task": "a"},
        {"image": "img/1.png", "captions": [prompt(2), prompt(1), prompt(3)], "label": 1, "task": "a"},
        {"image": "img/2.png", "captions": [prompt(4), prompt(2)], "label": 1, "task": "b"},
        {"images": ["img/3.png", "img/4.png"], "caption": prompt(4), "label": 1, "task": "c", "id": "ir0"},
        {"images": ["img/5.png", "img/0.png", "img/1.png"], "caption": prompt(5), "label": 0, "task": "c", "id": "ir1"},
    ]
    (root / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    # SugarCrepe: one json per split, images in COCO val2017 (here img/)
    (root / "sugarcrepe").mkdir()
    for split, pairs in {"add_att": [(0, 1), (1, 2)], "swap_obj": [(3, 4)]}.items():
        obj = {str(k): {"filename": f"{d}.png", "caption": prompt(d), "negative_caption": prompt(e)}
               for k, (d, e) in enumerate(pairs)}
        (root / "sugarcrepe" / f"{split}.json").write_text(json.dumps(obj))
    # ARO: a 16x8 canvas, digit 2 on the left half, digit 3 on the right; the box picks one
    canvas = Image.new("RGB", (16, 8))
    canvas.paste(found[2].convert("RGB"), (0, 0))
    canvas.paste(found[3].convert("RGB"), (8, 0))
    canvas.save(root / "img" / "pair.png")
    box = {"bbox_x": 8, "bbox_y": 0, "bbox_w": 8, "bbox_h": 8}
    (root / "visual_genome_relation.json").write_text(json.dumps([
        {"image_path": "img/pair.png", **box, "true_caption": prompt(3), "false_caption": prompt(2),
         "relation_name": "on"}]))
    (root / "visual_genome_attribution.json").write_text(json.dumps([
        {"image_path": "img/pair.png", **box, "true_caption": prompt(3), "false_caption": prompt(5),
         "attributes": ["white", "black"]}]))
    # What'sUp: dicts with caption_options, and COCO-spatial's lists
    (root / "controlled_images_dataset.json").write_text(json.dumps([
        {"image_path": "img/0.png", "caption_options": [prompt(0), prompt(1), prompt(2), prompt(3)]}]))
    (root / "coco_qa_one_obj.json").write_text(json.dumps([["img/4.png", prompt(4), prompt(5)]]))
    # GenEval-style folders with zero_shot_prompts.json
    gen = root / "geneval"
    for index, meta in enumerate([{"tag": "single_object", "include": [{"class": "1"}], "prompt": prompt(1)},
                                  {"tag": "position", "include": [{"class": "a"}, {"class": "b"}],
                                   "prompt": "b left of a"}]):
        folder = gen / f"{index:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        for k in range(2):
            found[1 + index].convert("RGB").save(folder / "samples" / f"{k:04d}.png")
    (gen / "zero_shot_prompts.json").write_text(json.dumps({"photo": {
        "single_object": [prompt(d) for d in range(4)],
        "position": {"b": {"a": ["b right of a", "b left of a"]}}}}))
    return root


@pytest.fixture(scope="module")
def tiny():
    return load_model(resolve_model("tiny"), "cpu", torch.float32)


def test_jsonl_reader(data):
    items = read_jsonl(data / "items.jsonl")
    assert [(i.id, i.task, i.kind, i.label, len(i.images), len(i.captions)) for i in items] == [
        ("1", "a", TEXT, 0, 1, 2), ("2", "a", TEXT, 1, 1, 3), ("3", "b", TEXT, 1, 1, 2),
        ("ir0", "c", IMAGE, 1, 2, 1), ("ir1", "c", IMAGE, 0, 3, 1)]
    assert items[0].images[0].name == str(data / "img" / "0.png")
    assert items[3].captions == (prompt(4),) and items[3].n_candidates == 2


def test_jsonl_reader_null_task_and_non_utf8_line(data, tmp_path):
    lines = [{"image": str(data / "img/0.png"), "captions": [prompt(0), prompt(1)], "label": 0, "task": None},
             {"image": str(data / "img/1.png"), "captions": [prompt(1), prompt(2)], "label": 0, "task": "t"}]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert [i.task for i in read_jsonl(path)] == ["mine", "t"]  # a null task is no task: the file's stem, not 'None'
    path.write_bytes(path.read_bytes() + b'{"image": "img/0.png", "captions": ["caf\xe9", "b"], "label": 0}\n')
    with pytest.raises(InputError, match=r"mine\.jsonl line 3 is not UTF-8 text"):  # was a UnicodeDecodeError
        read_jsonl(path)


def test_items_whose_correct_candidate_repeats_are_left_out_and_integer_floats_are_labels(data, tmp_path, capsys):
    """The copies of a repeated candidate score the same, so the tie's order would decide: such items are left out
    with a warning; a repeated wrong candidate is kept (the answer is still decidable); a label 1.0 is label 1."""
    lines = [{"image": "img/0.png", "captions": [prompt(0), prompt(1), prompt(0)], "label": 0, "id": "tie"},
             {"images": ["img/3.png", "img/3.png", "img/0.png"], "caption": prompt(3), "label": 1, "id": "tie_img"},
             {"image": "img/1.png", "captions": [prompt(1), prompt(2), prompt(2)], "label": 0, "id": "kept"},
             {"image": "img/2.png", "captions": [prompt(1), prompt(2)], "label": 1.0, "id": "float"}]
    path = data / "ties.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    items = read_jsonl(path)
    assert [(i.id, i.label) for i in items] == [("kept", 0), ("float", 1)]
    err = capsys.readouterr().err
    assert "2 item(s) left out: the correct candidate appears twice" in err and "item 'tie'" in err
    path.write_text(json.dumps(lines[0]) + "\n")
    with pytest.raises(InputError, match=r"ties\.jsonl holds no item that can be scored"):
        read_jsonl(path)
    path.write_text(json.dumps({**lines[3], "label": 1.5}) + "\n")
    with pytest.raises(InputError, match=r"label must be an integer in 0\.\.1, found 1\.5"):
        read_jsonl(path)


def test_geneval_include_not_a_list_is_an_input_error(data, tmp_path):
    gen = tmp_path / "g"
    (gen / "00000" / "samples").mkdir(parents=True)
    (gen / "00000" / "samples" / "0000.png").write_bytes((data / "img" / "1.png").read_bytes())
    (gen / "00000" / "metadata.jsonl").write_text(json.dumps({"tag": "colors", "include": 5, "prompt": "a red cat"}))
    (gen / "zero_shot_prompts.json").write_text(json.dumps({"photo": {"colors": {"cat": ["a red cat", "a blue cat"]}}}))
    with pytest.raises(InputError, match=r"metadata\.jsonl line 1: field 'include' must be a list"):
        read_geneval(gen)


def test_layout_readers(data):
    sc = read_sugarcrepe(data / "sugarcrepe", data / "img")
    assert [(i.id, i.task, i.captions, i.label) for i in sc] == [
        ("add_att_0", "add_att", (prompt(0), prompt(1)), 0), ("add_att_1", "add_att", (prompt(1), prompt(2)), 0),
        ("swap_obj_0", "swap_obj", (prompt(3), prompt(4)), 0)]
    assert sc[2].images[0].name == str(data / "img" / "3.png")
    rel = read_aro(data / "visual_genome_relation.json", data, "vg_relation")
    att = read_aro(data / "visual_genome_attribution.json", data, "vg_attribution")
    assert rel[0].task == "on" and att[0].task == "white-black" and rel[0].captions == (prompt(3), prompt(2))
    crop = np.asarray(rel[0].images[0].open())  # the box's half of the canvas: digit 3
    assert crop.shape == (8, 8, 3)
    assert np.array_equal(crop, np.asarray(Image.open(data / "img" / "3.png").convert("RGB")))
    wu = read_whatsup(data / "controlled_images_dataset.json", data)
    spatial = read_whatsup(data / "coco_qa_one_obj.json", data)
    assert len(wu[0].captions) == 4 and wu[0].label == 0 and wu[0].task == "controlled_images_dataset"
    assert spatial[0].captions == (prompt(4), prompt(5)) and spatial[0].images[0].name == str(data / "img/4.png")
    gen = read_geneval(data / "geneval")
    assert [(i.id, i.task, i.label) for i in gen] == [("00000_0000", "single_object", 1), ("00000_0001", "single_object", 1),
                                                       ("00001_0000", "position", 1), ("00001_0001", "position", 1)]
    assert gen[0].captions == tuple(prompt(d) for d in range(4))
    assert gen[2].captions == ("b right of a", "b left of a")  # nested by the included classes, in either order


def test_hf_reader(data, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"image": [str(data / "img" / f"{d}.png") for d in range(3)],
            "captions": [[prompt(d), prompt(d + 1)] for d in range(3)], "label": [0, 1, 0], "task": ["x", "x", "y"]}
    ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "tr"))
    items = read_hf(tmp_path / "tr", "test")
    assert [(i.id, i.task, i.kind, i.captions, i.label) for i in items] == [
        ("0", "x", TEXT, (prompt(0), prompt(1)), 0), ("1", "x", TEXT, (prompt(1), prompt(2)), 1),
        ("2", "y", TEXT, (prompt(2), prompt(3)), 0)]
    assert np.array_equal(np.asarray(items[1].images[0].open()), np.asarray(Image.open(data / "img/1.png").convert("RGB")))
    # SugarCrepe as the hub has it: one string column per caption, no label (the first is true)
    pos = datasets.Dataset.from_dict({"image": rows["image"][:2], "caption": [prompt(0), prompt(1)],
                                      "negative_caption": [prompt(5), prompt(4)]}).cast_column("image", datasets.Image())
    pos.save_to_disk(str(tmp_path / "sc"))
    items = read_hf(tmp_path / "sc", "train", caption_columns=["caption", "negative_caption"])
    assert [(i.captions, i.label, i.task) for i in items] == [((prompt(0), prompt(5)), 0, "sc"),
                                                             ((prompt(1), prompt(4)), 0, "sc")]
    # image retrieval: a list of images under one caption
    ir = datasets.Dataset.from_dict({"images": [rows["image"][:2]], "caption": [prompt(1)], "label": [1]})
    ir.cast_column("images", datasets.Sequence(datasets.Image())).save_to_disk(str(tmp_path / "ir"))
    [item] = read_hf(tmp_path / "ir", "train")
    assert item.kind == IMAGE and len(item.images) == 2 and item.label == 1


def _scorer(tiny, n_samples=6, schedule="reference", to_keep=(1,)):
    shape = tiny.latent_shape(tiny.native_size)
    classify, rows = make_schedule(schedule, list(to_keep), [n_samples], T=tiny.T, min_samples=2)
    scorer = Scorer(tiny.denoiser, tiny.make_objective(shape), make_noise(rows, shape, 0), "cpu", torch.float32, 64)
    return scorer, classify, sd_transform(tiny.native_size)


def _jobs(image, cond, ts):
    n = len(ts)
    return Jobs.build([image] * n, [cond] * n, ts, range(n))


def test_text_retrieval_errors_equal_direct_scorer_and_share_t_and_noise(tiny, data):
    item = read_jsonl(data / "items.jsonl")[1]  # three captions
    scorer, classify, transform = _scorer(tiny)
    seen = []
    evaluate = scorer.evaluate
    scorer.evaluate = lambda lat, conds, jobs, loss: (seen.append(jobs), evaluate(lat, conds, jobs, loss))[1]
    score = diffusion_item_scorer(tiny.encode_images, tiny.encode_prompts, scorer, transform, lambda k: classify)
    image = item.images[0].open()
    out = score(item, [image])
    assert out["evaluations"] == 3 * 6
    pairs = {}
    for jobs in seen:
        for c, t, e in zip(jobs.cond.tolist(), jobs.t.tolist(), jobs.noise.tolist()):
            pairs.setdefault(c, set()).add((t, e))
    assert len(pairs) == 3 and len({frozenset(v) for v in pairs.values()}) == 1  # one set of (t, ε) for all
    scorer.evaluate = evaluate
    latents = tiny.encode_images(transform(image)[None])
    conds = tiny.encode_prompts(list(item.captions))
    for c in range(3):
        ts = out["errors"][c]["t"]
        direct = scorer.evaluate(latents, conds, _jobs(0, c, ts), "l2")
        assert torch.allclose(out["errors"][c]["pred_errors"], direct.float(), rtol=1e-5, atol=1e-7)
    assert out["pred"] == int(np.argmin(out["scores"]))


def test_image_retrieval_choice_equals_direct_null_normalised_computation(tiny, data):
    item = read_jsonl(data / "items.jsonl")[4]  # three images under one caption
    scorer, classify, transform = _scorer(tiny)
    score = diffusion_item_scorer(tiny.encode_images, tiny.encode_prompts, scorer, transform, lambda k: classify)
    images = [s.open() for s in item.images]
    out = score(item, images)
    assert out["evaluations"] == 3 * 2 * 6  # images x (caption, "") x timesteps
    latents = tiny.encode_images(torch.stack([transform(im) for im in images]))
    conds = cat_conditions([tiny.encode_prompts([item.captions[0]]), tiny.encode_prompts([""])])
    direct = []
    for k in range(3):
        ts = out["errors"][k]["t"]
        e = [scorer.evaluate(latents, conds, _jobs(k, c, ts), "l2") for c in (0, 1)]
        direct.append(float((e[0] - e[1]).mean()))
        assert torch.allclose(out["errors"][k]["null_errors"], e[1].float(), rtol=1e-5, atol=1e-7)
    assert out["scores"] == pytest.approx(direct, rel=1e-5, abs=1e-7)
    assert out["pred"] == int(np.argmin(direct))


def test_statistical_schedule_prunes_captions(tiny, data):
    item = read_geneval(data / "geneval")[0]  # four candidate prompts
    scorer, classify, transform = _scorer(tiny, n_samples=40, schedule="statistical")
    score = diffusion_item_scorer(tiny.encode_images, tiny.encode_prompts, scorer, transform, lambda k: classify)
    out = score(item, [item.images[0].open()])
    assert out["evaluations"] == sum(len(e["t"]) for e in out["errors"].values()) < 4 * 40


def test_clip_scorer_picks_the_most_similar_caption_or_image(data):
    items = read_jsonl(data / "items.jsonl")
    sims = torch.tensor([[0.1, 0.7, 0.2], [0.9, 0.3, 0.4], [0.0, 0.5, 0.1]])  # (n_captions, n_images)
    score = clip_item_scorer(lambda images, captions: sims[: len(captions), : len(images)])
    text = score(items[1], [None])  # one image, three captions: column 0
    assert text["pred"] == 1 and text["scores"] == pytest.approx([-0.1, -0.9, -0.0])
    image = score(items[4], [None] * 3)  # three images, one caption: row 0
    assert image["pred"] == 1 and image["scores"] == pytest.approx([-0.1, -0.7, -0.2])


def test_tables_and_macro_average():
    records = [{"task": "a", "correct": True}, {"task": "a", "correct": False}, {"task": "b", "correct": True},
               {"task": "a", "correct": True}]
    t = accuracy_tables(records)
    assert t["accuracy"] == 75.0 and t["n"] == 4
    assert t["per_task"] == {"a": {"accuracy": pytest.approx(200 / 3), "n": 3}, "b": {"accuracy": 100.0, "n": 1}}
    assert t["macro_accuracy"] == pytest.approx((200 / 3 + 100) / 2)
    assert table_lines(t)[-1] == "| macro average | 83.33% | 2 tasks |"


def _argv(data, log_dir, *extra):
    return ["--dataset", "jsonl", "--data_path", str(data / "items.jsonl"), "--version", "tiny", "--n_samples", "4",
            "--log_dir", str(log_dir), "--no_progress", *extra]


def test_run_records_tables_and_resume(data, tmp_path, capsys):
    script = load_script("run_compositional.py")
    first = script.main(_argv(data, tmp_path))
    folder = first["folder"]
    assert folder.endswith("jsonl_items/vtiny_1trials_1keep_4samples")
    recs = [load_record(p) for p in sorted((tmp_path / "jsonl_items").glob("*/*.pt"))]
    assert len(recs) == 5 and first["done"] == 5 and first["n"] == 5
    for r in recs:
        assert r["correct"] == (r["pred"] == r["label"]) and r["pred"] == int(np.argmin(r["scores"]))
    by_task = {}
    for r in recs:
        by_task.setdefault(r["task"], []).append(r["correct"])
    macro = np.mean([100 * np.mean(v) for v in by_task.values()])
    assert first["per_task"].keys() == {"a", "b", "c"} and first["macro_accuracy"] == pytest.approx(macro)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == first["line"]
    assert re.match(rf"{re.escape(folder)}: accuracy {first['accuracy']:.2f}% over 5 items \(macro average "
                    rf"{macro:.2f}% over 3 tasks, 14 evaluations per item, 5 scored now", out[-1])  # ((2+3+2)*4 + (2+3)*2*4) / 5
    assert out[-2].startswith("| macro average |") and "| task | accuracy | items |" in out
    again = script.main(_argv(data, tmp_path))
    assert again["done"] == 0 and again["skipped"] == 5 and again["accuracy"] == first["accuracy"]
    assert json.loads((tmp_path / "jsonl_items" / "vtiny_1trials_1keep_4samples" / "results.json").read_text())["n"] == 5


def test_a_run_sharing_its_folder_waits_for_the_items_another_process_holds(data, tmp_path, monkeypatch):
    """Two identical commands on one folder: the one that finishes last writes results.json over every item, not
    only over those it scored (it waits for the items the other holds, as run_winoground.py does)."""
    script = load_script("run_compositional.py")
    folder = Path(script.main(_argv(data, tmp_path / "whole"))["folder"])
    held = sorted(folder.glob("*.pt"))[2]
    run = tmp_path / "shared" / folder.relative_to(tmp_path / "whole")
    run.mkdir(parents=True)
    claim = Path(f"{run / held.name}.claim")  # a live process on this host (our parent) is computing this item
    claim.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "time": 0}))

    def other_finishes(_seconds):  # instead of sleeping: the other process writes its record and drops its claim
        (run / held.name).write_bytes(held.read_bytes())
        claim.unlink()

    monkeypatch.setattr("diffusion_classifier.loop.time.sleep", other_finishes)
    shared = script.main(_argv(data, tmp_path / "shared"))
    assert shared["done"] == 4 and shared["n"] == 5  # was 4: the held item was left out of the tables
    assert json.loads((run / "results.json").read_text())["n"] == 5


def test_ids_that_are_no_plain_file_name_get_a_record_each(data, tmp_path):
    # 'a/b' and 'a-b' (and any two ids in other scripts) used to share one record file, so one item was skipped as
    # done with the other's record; an id too long for a file name stopped the run with an OSError traceback
    ids = ["a/b", "a-b", "猫", "犬", "x" * 300]
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps({"image": str(data / "img" / f"{k}.png"), "captions": [prompt(k), prompt(k + 1)],
                                        "label": 0, "id": i}) + "\n" for k, i in enumerate(ids)))
    argv = _argv(data, tmp_path / "logs", "--n_samples", "2")
    argv[argv.index("--data_path") + 1] = str(path)
    script = load_script("run_compositional.py")
    out = script.main(argv)
    assert out["n"] == 5 and out["done"] == 5
    recs = [load_record(p) for p in Path(out["folder"]).glob("*.pt")]
    assert sorted(r["id"] for r in recs) == sorted(ids)
    assert (Path(out["folder"]) / "a-b.pt").is_file()  # a plain id keeps its name: earlier runs resume
    again = script.main(argv)
    assert again["done"] == 0 and again["skipped"] == 5


def test_a_record_of_an_item_edited_since_is_refused_not_counted(data, tmp_path):
    path = tmp_path / "edit.jsonl"

    def write(captions):
        path.write_text("".join(json.dumps({"image": str(data / "img" / f"{k}.png"), "captions": c, "label": 0,
                                            "id": f"i{k}"}) + "\n" for k, c in enumerate(captions)))

    write([[prompt(0), prompt(1)], [prompt(1), prompt(2)]])
    argv = _argv(data, tmp_path / "logs", "--n_samples", "2")
    argv[argv.index("--data_path") + 1] = str(path)
    script = load_script("run_compositional.py")
    first = script.main(argv)
    assert first["done"] == 2
    assert script.main(argv)["skipped"] == 2  # unchanged data resumes
    write([[prompt(0), prompt(1)], [prompt(2), prompt(1)]])  # item i1's captions edited
    with pytest.raises(InputError, match=r"i1.pt was scored for item 'i1' with captions .*the data changed"):
        script.main(argv)
    assert len(list(Path(first["folder"]).glob("*.pt"))) == 2  # nothing written was lost


def test_timestep_weights_rank_captions_and_images_by_weighted_errors_on_the_same_evaluations(data, tmp_path):
    from diffusion_classifier.weighting import TimestepWeights, weights_digest

    script = load_script("run_compositional.py")
    plain = script.main(_argv(data, tmp_path))
    w = torch.full((1000,), 0.05, dtype=torch.float64)
    w[::7] = 20.0  # a few timesteps carry the decision
    path = tmp_path / "w.json"
    TimestepWeights(w, "bins").save(path)
    weighted = script.main(_argv(data, tmp_path, "--timestep_weights", str(path)))
    assert weighted["folder"].endswith(f"vtiny_1trials_1keep_4samples_tw{weights_digest(path)}")
    manifest = json.loads((tmp_path / "jsonl_items" / weighted["folder"].split("/")[-1] / "manifest.json").read_text())
    assert manifest["settings"]["timestep_weights"] == weights_digest(path)
    before = {p.name: load_record(p) for p in (tmp_path / "jsonl_items" / plain["folder"].split("/")[-1]).glob("*.pt")}
    after = {p.name: load_record(p) for p in (tmp_path / "jsonl_items" / weighted["folder"].split("/")[-1]).glob("*.pt")}
    assert before.keys() == after.keys() and len(after) == 5
    changed = 0
    for name, r in after.items():
        for c, e in r["errors"].items():  # the same (t, ε), so the same errors: only the ranking differs
            assert torch.equal(e["t"], before[name]["errors"][c]["t"])
            assert torch.allclose(e["pred_errors"], before[name]["errors"][c]["pred_errors"])
            expect = float((e["pred_errors"].double() * w[e["t"].long()]).mean())
            assert r["scores"][c] == pytest.approx(expect, rel=1e-9)
        assert r["pred"] == int(np.argmin(r["scores"]))
        changed += r["scores"] != before[name]["scores"]
    assert changed == 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"weights": [1.0, -1.0]}))
    with pytest.raises(InputError, match="positive finite"):  # before the model loads
        script.main(_argv(data, tmp_path, "--timestep_weights", str(bad)))
    with pytest.raises(InputError, match="--model sd"):  # CLIP has no timesteps
        script.main(_argv(data, tmp_path, "--timestep_weights", str(path), "--model", "clip"))


def test_sugarcrepe_run_and_unreadable_skipped(data, tmp_path):
    script = load_script("run_compositional.py")
    (tmp_path / "img").mkdir()
    for p in (data / "img").iterdir():
        (tmp_path / "img" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "img" / "3.png").write_text("not a png")
    argv = ["--dataset", "sugarcrepe", "--data_path", str(data / "sugarcrepe"), "--image_root", str(tmp_path / "img"),
            "--version", "tiny", "--n_samples", "2", "--log_dir", str(tmp_path / "logs"), "--no_progress",
            "--skip_unreadable"]
    out = script.main(argv)
    assert out["n"] == 2 and out["per_task"].keys() == {"add_att"} and len(out["unreadable"]) == 1
    assert "1 unreadable skipped" in out["line"] and "3.png" in out["line"]


def _exit_line(argv, capsys):
    script = load_script("run_compositional.py")
    with pytest.raises(SystemExit) as e:
        cli.run(script.main, argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return e.value.code, err


@pytest.mark.parametrize("line, expected", [
    ({"image": "img/0.png", "captions": [prompt(0), prompt(1)], "label": 2}, r"line 2: label must be an integer in 0..1, found 2"),
    ({"image": "img/0.png", "captions": [prompt(0)], "label": 0}, r"line 2: expected at least 2 captions"),
    ({"image": "img/0.png", "label": 0}, r"line 2: expected one object a line: .* found keys \['image', 'label'\]"),
    ({"image": "img/none.png", "captions": ["x", "y"], "label": 0}, r"unreadable image .*none.png: the file does not exist"),
])
def test_bad_jsonl_is_one_line(data, tmp_path, capsys, line, expected):
    good = {"image": "img/1.png", "captions": [prompt(1), prompt(2)], "label": 0}
    path = data / f"bad_{tmp_path.name}.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    argv = _argv(data, tmp_path)
    argv[argv.index("--data_path") + 1] = str(path)
    code, err = _exit_line(argv, capsys)
    assert code == 2 and re.search(expected, err), err
    assert str(path) in err or "unreadable image" in err  # the data file's line, or the image file itself


def test_bad_layouts_are_one_line(data, tmp_path, capsys):
    code, err = _exit_line(["--dataset", "sugarcrepe", "--data_path", str(data / "sugarcrepe"), "--version", "tiny",
                            "--log_dir", str(tmp_path)], capsys)
    assert code == 2 and "needs --image_root DIR" in err
    (tmp_path / "g" / "00000" / "samples").mkdir(parents=True)
    (tmp_path / "g" / "00000" / "metadata.jsonl").write_text(json.dumps({"tag": "single_object", "prompt": "a cat"}))
    (tmp_path / "g" / "zero_shot_prompts.json").write_text(json.dumps({"photo": {"single_object": ["a dog"]}}))
    code, err = _exit_line(["--dataset", "geneval", "--data_path", str(tmp_path / "g"), "--version", "tiny",
                            "--log_dir", str(tmp_path)], capsys)
    assert code == 2 and "metadata.jsonl line 1: prompt 'a cat' is not among the candidate prompts" in err
    (tmp_path / "rel.json").write_text(json.dumps([{"image_path": "x.png", "bbox_x": 0, "bbox_y": 0, "bbox_w": 4,
                                                    "bbox_h": 4, "true_caption": "a", "relation_name": "on"}]))
    code, err = _exit_line(["--dataset", "vg_relation", "--data_path", str(tmp_path / "rel.json"), "--version", "tiny",
                            "--log_dir", str(tmp_path)], capsys)
    assert code == 2 and "rel.json item 0: missing field 'false_caption'" in err


@pytest.mark.slow
def test_script_exits_2_without_traceback(data, tmp_path):
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    proc = subprocess.run([sys.executable, str(REPO / "run_compositional.py"), "--data_path", str(tmp_path / "bad.jsonl"),
                           "--version", "tiny", "--log_dir", str(tmp_path / "logs")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "bad.jsonl line 1 is not valid JSON" in proc.stderr
