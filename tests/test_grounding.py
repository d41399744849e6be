"""Referring expressions: readers of the three layouts, regions, the shared (t, ε), the null-normalised choice,
records, resume and one-line errors (run_refcoco.py with the shipped digits model)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, load_script
from diffusion_classifier import cli
from diffusion_classifier.data.digits import DigitsDataset
from diffusion_classifier.data.refcoco import iou, read_hf, read_jsonl, read_proposals, read_refer
from diffusion_classifier.engine import Scorer, cat_conditions
from diffusion_classifier.errors import InputError
from diffusion_classifier.families import load_model, resolve_model
from diffusion_classifier.noise import make_noise
from diffusion_classifier.schedules.statistical import make_schedule
from diffusion_classifier.tasks.grounding import (
    candidate_evaluator,
    diffusion_query_scorer,
    masked,
    region_views,
    square_crop,
)

scenes_lib = load_script("benchmarks/lib/scenes.py")
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four digit scenes (3 items, 24 px canvas) in the refer, jsonl and hf layouts."""
    root = tmp_path_factory.mktemp("scenes")
    digits = DigitsDataset("test")
    items = np.stack([np.asarray(digits[i][0].convert("L")) for i in range(60)])
    items = (items.astype(np.float32) * (255.0 / max(items.max(), 1))).astype(np.uint8)
    labels = np.array([digits[i][1] for i in range(60)])
    scenes = scenes_lib.make_scenes(items, labels, 4, 3, canvas=24, sizes=(8, 10), seed=0)
    images = root / "images" / "mscoco" / "images" / "train2014"
    scenes_lib.write_refer(root, "refcoco", "val", scenes, WORDS)
    scenes_lib.write_jsonl(root / "q.jsonl", images, scenes, WORDS, "val")
    scenes_lib.write_hf(root / "hf", "val", scenes, WORDS, root / "proposals.json")
    return root


@pytest.fixture(scope="module")
def tiny():
    return load_model(resolve_model("tiny"), "cpu", torch.float32)


def images_of(root):
    return root / "images" / "mscoco" / "images" / "train2014"


def test_readers_agree_across_layouts(data):
    refer = read_refer(data, "refcoco", "val")
    jsonl = read_jsonl(data / "q.jsonl", images_of(data))
    hf = read_hf(data / "hf", "val", proposals=read_proposals(data / "proposals.json"))
    assert len(refer) == len(jsonl) == len(hf) == 4
    for a, b, c in zip(refer, jsonl, hf):
        assert (a.qid, a.image, a.expression, a.candidates, a.gold, a.gold_box) == \
               (b.qid, b.image, b.expression, b.candidates, b.gold, b.gold_box)
        assert a.expression == c.expression and [box for _, box in a.candidates] == [box for _, box in c.candidates]
        assert c.gold is None and c.gold_box == a.gold_box  # detections: judged by IoU only
        assert np.array_equal(np.asarray(a.open_image()), np.asarray(c.open_image()))
        assert a.gold in dict(a.candidates) and a.category == b.category


class Doctored:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_doctored_pickle_is_refused_and_runs_nothing(data, tmp_path):
    bad = tmp_path / "refcoco"
    bad.mkdir()
    (bad / "instances.json").write_text((data / "refcoco" / "instances.json").read_text())
    marker = tmp_path / "ran"
    with open(bad / "refs(unc).p", "wb") as f:
        pickle.dump([{"ref_id": 1, "x": Doctored(marker)}], f)
    with pytest.raises(InputError, match=r"refs\(unc\)\.p is refused .*global 'posix.system' is not allowed") as e:
        read_refer(tmp_path, "refcoco", "val")
    assert "\n" not in str(e.value) and not marker.exists()


def test_crop_is_square_and_whole_and_mask_blanks_outside():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(1, 255, (30, 40, 3), dtype=np.uint8))
    box = (5.0, 7.0, 12.0, 4.0)  # wide
    crop = np.asarray(square_crop(image, box))
    assert crop.shape == (12, 12, 3)
    assert np.array_equal(crop[4:8], np.asarray(image)[7:11, 5:17])  # centred, nothing cut
    assert not crop[:4].any() and not crop[8:].any()  # padding only
    m = np.asarray(masked(image, box))
    assert m.shape == (40, 40, 3)  # the 40x30 image padded to a square
    inside = np.zeros((30, 40), bool)
    inside[7:11, 5:17] = True
    body = m[5:35]  # (40 - 30) // 2 rows of padding above
    assert np.array_equal(body[inside], np.asarray(image)[inside]) and not body[~inside].any()
    assert len(region_views(image, [box, box], "both")) == 4


def test_a_non_square_model_gets_regions_padded_to_its_own_shape_whole():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(1, 255, (30, 40, 3), dtype=np.uint8))
    tall, wide = (7.0, 3.0, 6.0, 20.0), (5.0, 7.0, 30.0, 4.0)  # [x, y, w, h]
    for box, aspect in [(tall, (28, 56)), (wide, (28, 56)), (tall, (56, 28)), (wide, (1, 1))]:
        x, y, w, h = map(int, box)
        crop = np.asarray(square_crop(image, box, aspect=aspect))
        height, width = crop.shape[:2]
        assert height * aspect[1] == width * aspect[0]  # the model's shape (exact for these boxes)
        assert height >= h and width >= w and (height == h or width == w)  # the smallest such canvas
        top, left = (height - h) // 2, (width - w) // 2
        assert np.array_equal(crop[top:top + h, left:left + w], np.asarray(image)[y:y + h, x:x + w])  # whole, centred
        assert crop.sum() == np.asarray(image)[y:y + h, x:x + w].sum()  # the rest is padding
    assert np.asarray(square_crop(image, wide, aspect=(28, 56))).shape == (15, 30, 3)
    assert np.asarray(masked(image, wide, aspect=(28, 56))).shape == (30, 60, 3)
    views = region_views(image, [tall, wide], "both", aspect=(28, 56))
    assert [v.size[0] / v.size[1] for v in views] == [2.0] * 4  # width : height = 56 : 28


def test_iou_and_hit():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def _setup(tiny, data, n_samples=6):
    query = read_jsonl(data / "q.jsonl", images_of(data))[0]
    shape = tiny.latent_shape(tiny.native_size)
    classify, rows = make_schedule("reference", [1], [n_samples], T=tiny.T)
    scorer = Scorer(tiny.denoiser, tiny.make_objective(shape), make_noise(rows, shape, 0), "cpu", torch.float32, 64)
    from diffusion_classifier.data.transforms import sd_transform

    return query, scorer, classify, sd_transform(tiny.native_size)


def test_every_candidate_is_scored_on_the_same_t_and_noise(tiny, data):
    query, scorer, classify, transform = _setup(tiny, data)
    seen = []
    evaluate = scorer.evaluate
    scorer.evaluate = lambda lat, conds, jobs, loss: (seen.append(jobs), evaluate(lat, conds, jobs, loss))[1]
    score = diffusion_query_scorer(tiny.encode_images, tiny.encode_prompts, scorer, transform, lambda k: classify,
                                   "both", "{}", True)
    out = score(query, query.open_image())
    assert out["evaluations"] == 3 * 2 * 2 * 6  # candidates x views x (prompt, "") x timesteps
    jobs = seen[0]
    pairs = {}
    for i, c, t, e in zip(jobs.image.tolist(), jobs.cond.tolist(), jobs.t.tolist(), jobs.noise.tolist()):
        pairs.setdefault((i, c), set()).add((t, e))
    assert len(pairs) == 12 and len({frozenset(v) for v in pairs.values()}) == 1  # one set of (t, ε) for all


def test_null_normalised_choice_equals_direct_computation(tiny, data):
    query, scorer, classify, transform = _setup(tiny, data)
    image = query.open_image()
    score = diffusion_query_scorer(tiny.encode_images, tiny.encode_prompts, scorer, transform, lambda k: classify,
                                   "crop", "the {}", True)
    out = score(query, image)
    # direct: mean over the grid of err(prompt, crop_k) - err("", crop_k), each on the same (t, noise row)
    crops = torch.stack([transform(square_crop(image, box)) for _, box in query.candidates])
    latents = tiny.encode_images(crops)
    conds = cat_conditions([tiny.encode_prompts([f"the {query.expression}"]), tiny.encode_prompts([""])])
    ts = out["errors"][0]["t"]
    direct = []
    for k in range(len(crops)):
        e = [scorer.evaluate(latents, conds, _jobs(k, c, ts), "l2") for c in (0, 1)]
        direct.append(float((e[0] - e[1]).mean()))
    assert out["scores"] == pytest.approx(direct, rel=1e-5, abs=1e-7)
    assert out["pred"] == int(np.argmin(direct))
    raw = candidate_evaluator(scorer, latents, conds, 1, False)(_jobs(0, 0, ts))
    assert torch.allclose(raw, scorer.evaluate(latents, conds, _jobs(0, 0, ts), "l2"))


def _jobs(image, cond, ts):
    from diffusion_classifier.engine import Jobs

    n = len(ts)
    return Jobs.build([image] * n, [cond] * n, ts, range(n))


def _argv(data, log_dir, *extra):
    return ["--dataset", "reclip", "--data_path", str(data / "q.jsonl"), "--image_root", str(images_of(data)),
            "--version", "tiny", "--n_samples", "4", "--log_dir", str(log_dir), "--no_progress", "--loss", "l2", *extra]


def test_run_records_resume_and_same_records_in_refer_layout(data, tmp_path):
    script = load_script("run_refcoco.py")
    first = script.main(_argv(data, tmp_path / "a"))
    folder = first["folder"]
    records = sorted(os.listdir(folder))
    assert first["done"] == 4 and first["n"] == 4 and first["evaluations_per_expression"] == 3 * 2 * 4
    assert first["line"].startswith(f"{folder}: accuracy {first['accuracy']:.2f}% over 4 expressions (IoU > 0.5), 24 evaluations per expression")
    again = script.main(_argv(data, tmp_path / "a"))
    assert again["done"] == 0 and again["skipped"] == 4 and again["accuracy"] == first["accuracy"]
    from diffusion_classifier.records import load_record

    recs = {p: load_record(f"{folder}/{p}") for p in records if p.endswith(".pt")}
    for r in recs.values():
        assert r["hit"] == (iou(r["box"], r["gold_box"]) > 0.5) and r["box"] == r["boxes"][r["pred"]]
    refer = script.main(["--dataset", "refcoco", "--dataset_root", str(data), "--split", "val", "--version", "tiny",
                         "--n_samples", "4", "--log_dir", str(tmp_path / "b"), "--no_progress", "--loss", "l2"])
    for p, r in recs.items():
        o = load_record(f"{refer['folder']}/{p}")
        assert (o["pred"], o["scores"], o["candidates"], o["iou"]) == (r["pred"], r["scores"], r["candidates"], r["iou"])


def _exit_line(argv, capsys):
    script = load_script("run_refcoco.py")
    with pytest.raises(SystemExit) as e:
        cli.run(script.main, argv)
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def _jsonl_with(tmp_path, data, edit):
    lines = [json.loads(x) for x in (data / "q.jsonl").read_text().splitlines()]
    edit(lines)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda ls: ls[1]["anns"][0].__setitem__("bbox", [1, 1, 0, 3]), r"bad.jsonl line 2 anns\[0\]: box .* has zero or negative size"),
    (lambda ls: ls[0].pop("anns"), r"bad.jsonl line 1: missing field 'anns'"),
    (lambda ls: ls[2].__setitem__("file_name", "COCO_none.png"), r"unreadable image .*COCO_none.png: the file does not exist"),
    # ids that are no integer were a ValueError/TypeError traceback
    (lambda ls: ls[1].__setitem__("image_id", "abc"), r"bad.jsonl line 2: field 'image_id' must be an integer, found 'abc'"),
    (lambda ls: ls[0]["anns"][0].__setitem__("id", None), r"bad.jsonl line 1 anns\[0\]: field 'id' must be an integer, found None"),
])
def test_bad_jsonl_is_one_line(data, tmp_path, capsys, edit, expected):
    path = _jsonl_with(tmp_path, data, edit)
    argv = _argv(data, tmp_path / "logs")
    argv[argv.index("--data_path") + 1] = str(path)
    code, err = _exit_line(argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    import re

    assert re.search(expected, err), err


def test_jsonl_ids_as_text_and_non_utf8_lines(data, tmp_path):
    lines = [json.loads(x) for x in (data / "q.jsonl").read_text().splitlines()]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({**x, "image_id": str(x["image_id"])}) + "\n" for x in lines))
    assert [q.image_id for q in read_jsonl(path, images_of(data))] == \
        [q.image_id for q in read_jsonl(data / "q.jsonl", images_of(data))]  # an id written as text is still the id
    path.write_bytes(path.read_bytes() + b'{"file_name": "caf\xe9.png"}\n')
    with pytest.raises(InputError, match=rf"q\.jsonl line {len(lines) + 1} is not UTF-8 text"):
        read_jsonl(path, images_of(data))


def test_box_outside_the_image_stops_with_one_line_and_keeps_finished_records(data, tmp_path, capsys):
    path = _jsonl_with(tmp_path, data, lambda ls: ls[2]["anns"][0].__setitem__("bbox", [20, 20, 30, 30]))
    argv = _argv(data, tmp_path / "logs")
    argv[argv.index("--data_path") + 1] = str(path)
    code, err = _exit_line(argv, capsys)
    assert code == 2 and "lies outside the 24x24 image" in err and "COCO_train2014_" in err
    folders = list((tmp_path / "logs").glob("*/*"))
    assert len(folders) == 1 and len(list(folders[0].glob("*.pt"))) == 2  # the two queries before it stay


def test_missing_split_and_doctored_pickle_are_one_line(data, tmp_path, capsys):
    code, err = _exit_line(["--dataset", "refcoco", "--dataset_root", str(data), "--split", "testB",
                            "--version", "tiny", "--log_dir", str(tmp_path)], capsys)
    assert code == 2 and "has no ref in split 'testB'; its splits are val" in err
    code, err = _exit_line(["--dataset", "hf", "--dataset_root", str(data / "hf"), "--split", "val",
                            "--version", "tiny", "--log_dir", str(tmp_path)], capsys)
    assert code == 2 and "carry only the gold box" in err and "--proposals FILE" in err


@pytest.mark.slow
def test_script_exits_2_without_traceback(data, tmp_path):
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "instances.json").write_text("{}")
    with open(tmp_path / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump([Doctored(tmp_path / "ran")], f)
    proc = subprocess.run([sys.executable, str(REPO / "run_refcoco.py"), "--dataset", "refcoco", "--dataset_root",
                           str(tmp_path), "--version", "tiny", "--log_dir", str(tmp_path / "logs")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "is refused" in proc.stderr
    assert not (tmp_path / "ran").exists()


def test_repeated_query_ids_are_named_with_their_positions():
    from diffusion_classifier.errors import InputError
    from diffusion_classifier.tasks.candidates import unique_ids

    assert list(unique_ids(["a1", "b2", "c3"], lambda s: s[1], "query", "queries", "expression")) == ["1", "2", "3"]
    with pytest.raises(InputError, match=r"query ids repeat: queries 2 and 4 \(of 4\) both have the id '2'; expected "
                                         r"one id per expression"):
        unique_ids(["a1", "b2", "c3", "d2"], lambda s: s[1], "query", "queries", "expression")


def test_an_empty_expression_is_scored_with_a_warning(data, tmp_path, capsys):
    path = _jsonl_with(tmp_path, data, lambda ls: ls[1]["sentences"][0].__setitem__("raw", "  "))
    argv = _argv(data, tmp_path / "logs")
    argv[argv.index("--data_path") + 1] = str(path)
    result = load_script("run_refcoco.py").main(argv)
    assert result["n"] == 4  # scored and counted
    assert "1 expression(s) are empty (first: query '" in capsys.readouterr().err
