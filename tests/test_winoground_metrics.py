import json
import math
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_classifier.data.entries import json_lines
from diffusion_classifier.data.winoground import WinogroundImages, load_winoground
from diffusion_classifier.errors import InputError
from diffusion_classifier.records import write_json
from diffusion_classifier.tasks.winoground import (
    format_scores,
    group_correct,
    image_correct,
    normalized_image_scores,
    text_correct,
    winoground_scores,
)

# scores[caption, image], higher = better match
PERFECT = [[1.0, 0.0], [0.0, 1.0]]
TEXT_ONLY = [[2.0, 3.0], [1.0, 4.0]]  # each image prefers its caption; caption 0 prefers image 1
IMAGE_ONLY = [[3.0, 2.0], [4.0, 5.0]]  # each caption prefers its image; image 0 prefers caption 1
ALL_EQUAL = [[0.5, 0.5], [0.5, 0.5]]
TEXT_TIE = [[1.0, 0.0], [1.0, 2.0]]  # s00 == s10: text wrong; image right


def test_single_examples_hand_worked():
    cases = {
        "perfect": (PERFECT, True, True),
        "text_only": (TEXT_ONLY, True, False),
        "image_only": (IMAGE_ONLY, False, True),
        "all_equal": (ALL_EQUAL, False, False),
        "text_tie": (TEXT_TIE, False, True),
    }
    for name, (s, text, image) in cases.items():
        assert bool(text_correct(s)) is text, name
        assert bool(image_correct(s)) is image, name
        assert bool(group_correct(s)) is (text and image), name


def test_vectorised_matches_per_example_and_accepts_torch():
    batch = np.array([PERFECT, TEXT_ONLY, IMAGE_ONLY, ALL_EQUAL, TEXT_TIE])
    assert text_correct(batch).tolist() == [True, True, False, False, False]
    assert image_correct(batch).tolist() == [True, False, True, False, True]
    assert group_correct(batch).tolist() == [True, False, False, False, False]
    t = torch.tensor(batch, dtype=torch.bfloat16)
    assert text_correct(t).tolist() == text_correct(batch).tolist()
    assert image_correct(t).tolist() == image_correct(batch).tolist()


def test_bad_shape_raises():
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, 2\).*got \(3, 2, 3\)"):
        text_correct(np.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match="one tag per example \\(2\\), got 3"):
        winoground_scores(np.zeros((2, 2, 2)), ["Object"] * 3)


def _hand_result():
    scores = np.array([PERFECT, TEXT_ONLY, IMAGE_ONLY, ALL_EQUAL, TEXT_TIE])
    tags = ["Object", "Object", "Relation", "Both", "Object"]
    return winoground_scores(scores, tags)


def test_per_tag_aggregation_and_ci_hand_computed():
    r = _hand_result()
    assert list(r) == ["Overall", "Object", "Relation", "Both"]
    # Overall: text 2/5, image 3/5, group 1/5; CI = 1.96 sqrt(p(1-p)/n) in percent
    assert r["Overall"]["text"]["score"] == pytest.approx(40.0)
    assert r["Overall"]["text"]["ci95"] == pytest.approx(42.94145, abs=1e-4)
    assert r["Overall"]["image"]["score"] == pytest.approx(60.0)
    assert r["Overall"]["image"]["ci95"] == pytest.approx(42.94145, abs=1e-4)
    assert r["Overall"]["group"]["score"] == pytest.approx(20.0)
    assert r["Overall"]["group"]["ci95"] == pytest.approx(35.06155, abs=1e-4)
    assert r["Overall"]["text"]["n"] == 5
    # Object = PERFECT, TEXT_ONLY, TEXT_TIE: text 2/3, image 2/3, group 1/3
    assert r["Object"]["text"]["score"] == pytest.approx(200 / 3)
    assert r["Object"]["image"]["score"] == pytest.approx(200 / 3)
    assert r["Object"]["group"]["score"] == pytest.approx(100 / 3)
    assert r["Object"]["group"]["ci95"] == pytest.approx(53.34444, abs=1e-4)
    assert r["Object"]["group"]["n"] == 3
    assert r["Relation"]["text"] == {"score": 0.0, "ci95": 0.0, "n": 1}
    assert r["Relation"]["image"] == {"score": 100.0, "ci95": 0.0, "n": 1}
    assert all(r["Both"][k]["score"] == 0.0 for k in ("text", "image", "group"))


def test_tag_order_is_fixed_then_others():
    scores = np.tile(np.array(PERFECT), (5, 1, 1))
    r = winoground_scores(scores, ["Zeta", "Both", "Relation", "Alpha", "Both"])
    assert list(r) == ["Overall", "Relation", "Both", "Alpha", "Zeta"]
    assert r["Both"]["text"]["n"] == 2


def test_format_scores_exact_strings():
    lines = format_scores(_hand_result())
    assert len(lines) == 12
    assert lines[:3] == [
        "Overall text score: 40.0 +/- 42.9",
        "Overall image score: 60.0 +/- 42.9",
        "Overall group score: 20.0 +/- 35.1",
    ]
    assert lines[3:6] == [
        "Object text score: 66.7 +/- 53.3",
        "Object image score: 66.7 +/- 53.3",
        "Object group score: 33.3 +/- 53.3",
    ]
    assert lines[7] == "Relation image score: 100.0 +/- 0.0"
    assert lines[-1] == "Both group score: 0.0 +/- 0.0"


def test_format_reference_number():
    # 154 of 400 text-correct is the paper's 38.5; its interval is 1.96 sqrt(.385 * .615 / 400)
    scores = np.array([PERFECT] * 154 + [ALL_EQUAL] * 246)
    r = winoground_scores(scores, ["Object"] * 400)
    assert format_scores(r)[0] == f"Overall text score: 38.5 +/- {196 * math.sqrt(.385 * .615 / 400):.1f}"
    assert format_scores(r)[0] == "Overall text score: 38.5 +/- 4.8"


def test_normalisation_keeps_text_correctness_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(500, 2, 2))
    uncond = rng.normal(size=(500, 2)) * 3
    norm = normalized_image_scores(scores, uncond)
    expected = np.empty_like(scores)
    for n in range(500):
        for c in range(2):
            for i in range(2):
                expected[n, c, i] = scores[n, c, i] - uncond[n, i]
    np.testing.assert_allclose(norm, expected)
    assert (text_correct(norm) == text_correct(scores)).all()
    assert (image_correct(norm) != image_correct(scores)).any()  # the image score does move


def test_normalisation_can_flip_image_correctness():
    # s = -err: image 0 is easy to denoise under any caption, so both captions prefer it
    s = np.array([[-1.0, -2.0], [-1.1, -1.9]])
    u = np.array([-1.05, -1.95])  # -err(empty prompt, image)
    assert text_correct(s) and not image_correct(s)
    norm = normalized_image_scores(s, u)
    assert text_correct(norm) and image_correct(norm)
    np.testing.assert_allclose(norm, [[0.05, -0.05], [-0.05, 0.05]])
    with pytest.raises(ValueError, match=r"shape \(2,\).*got \(3,\)"):
        normalized_image_scores(s, np.zeros(3))


def test_write_json_atomic_roundtrip(tmp_path):
    path = tmp_path / "out" / "winoground.json"
    r = _hand_result()
    write_json(path, r)
    assert json.loads(path.read_text()) == r
    write_json(path, {"n": np.int64(3), "acc": np.float32(0.5)})  # overwrites in place
    assert json.loads(path.read_text()) == {"n": 3, "acc": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["winoground.json"]
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"n": 3, "acc": 0.5}  # untouched by the failed write
    assert [p.name for p in path.parent.iterdir()] == ["winoground.json"]


# ---- loader on a tiny local copy ----

COLORS = {f"ex_{e}_img_{k}": (40 * e + 10, 100 * k, 7) for e in range(3) for k in range(2)}


def _record(e):
    return {
        "id": e, "caption_0": f"a cap {e}", "caption_1": f"cap a {e}", "tag": "Noun",
        "secondary_tag": "" if e else "Symbolic", "num_main_preds": 1,
        "collapsed_tag": ["Object", "Relation", "Both"][e],
        "image_0": f"ex_{e}_img_0", "image_1": f"ex_{e}_img_1",
    }


def _png_bytes(color):
    import io

    buf = io.BytesIO()
    Image.new("RGBA", (2, 2), color + (255,)).save(buf, format="PNG")  # RGBA PNG: must come back RGB
    return buf.getvalue()


def _make(tmp_path, layout):
    d = tmp_path / layout
    d.mkdir()
    (d / "examples.jsonl").write_text("".join(json.dumps(_record(e)) + "\n" for e in range(3)))
    if layout == "folder":
        (d / "images").mkdir()
        for name, color in COLORS.items():
            (d / "images" / f"{name}.png").write_bytes(_png_bytes(color))
    else:
        prefix = "images/" if layout == "zip_images" else ""
        with zipfile.ZipFile(d / "images.zip", "w") as z:
            if prefix:
                z.writestr("images/", b"")
            for name, color in COLORS.items():
                z.writestr(f"{prefix}{name}.png", _png_bytes(color))
    return d


@pytest.mark.parametrize("layout", ["folder", "zip_images", "zip_root"])
def test_loader_layouts(tmp_path, layout):
    d = _make(tmp_path, layout)
    examples = load_winoground(d)
    assert [ex.id for ex in examples] == [0, 1, 2]
    assert [ex.collapsed_tag for ex in examples] == ["Object", "Relation", "Both"]
    ex = examples[1]
    assert (ex.caption_0, ex.caption_1, ex.tag, ex.secondary_tag) == ("a cap 1", "cap a 1", "Noun", "")
    assert (ex.image_0, ex.image_1) == ("ex_1_img_0", "ex_1_img_1")
    for e, ex in enumerate(examples):
        for k in range(2):
            im = ex.open_image(k)
            assert im.mode == "RGB" and im.size == (2, 2)
            assert im.getpixel((1, 1)) == COLORS[f"ex_{e}_img_{k}"]
    # a reader survives pickling (DataLoader workers) and reopens the zip there
    images = pickle.loads(pickle.dumps(examples[2].images))
    assert images.open("ex_2_img_1").getpixel((0, 0)) == COLORS["ex_2_img_1"]
    examples[0].images.close()


def test_loader_limit(tmp_path):
    d = _make(tmp_path, "zip_images")
    assert [ex.id for ex in load_winoground(d, limit=2)] == [0, 1]
    assert len(load_winoground(d, limit=10)) == 3
    with pytest.raises(ValueError, match="limit must be a positive int or None, got 0"):
        load_winoground(d, limit=0)


def test_loader_missing_dir_and_jsonl(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        load_winoground(missing)
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg
    assert "https://huggingface.co/datasets/facebook/winoground" in msg and f"--data_dir {missing}" in msg
    d = _make(tmp_path, "folder")
    (d / "examples.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"examples\.jsonl not found.*accept the terms"):
        load_winoground(d)


def test_loader_no_images(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "examples.jsonl").write_text(json.dumps(_record(0)) + "\n")
    with pytest.raises(FileNotFoundError, match=r"expected a folder .*images or a zip .*images\.zip"):
        load_winoground(d)


def test_loader_malformed_lines(tmp_path):
    d = _make(tmp_path, "folder")
    good = [json.dumps(_record(e)) for e in range(3)]
    (d / "examples.jsonl").write_text("\n".join([good[0], "{not json", good[2]]) + "\n")
    with pytest.raises(ValueError, match="line 2: expected a JSON object, found invalid JSON"):
        load_winoground(d)
    rec = _record(2)
    del rec["collapsed_tag"], rec["image_1"]
    (d / "examples.jsonl").write_text("\n".join([good[0], good[1], json.dumps(rec)]) + "\n")
    with pytest.raises(ValueError, match="line 3: missing keys collapsed_tag, image_1$"):
        load_winoground(d)


def test_loader_reads_json_lines_as_objects(tmp_path):
    d = _make(tmp_path, "folder")
    good = [json.dumps(_record(e)) for e in range(3)]
    (d / "examples.jsonl").write_text("\n".join([good[0], "[1, 2]", good[2]]) + "\n")
    with pytest.raises(InputError, match=r"examples\.jsonl line 2: expected a JSON object, found list$"):
        load_winoground(d)
    (d / "examples.jsonl").write_text("\n".join(["", good[0], "  ", good[1], good[2]]) + "\n")  # blank lines skipped
    assert [ex.id for ex in load_winoground(d)] == [0, 1, 2]
    (d / "examples.jsonl").write_text("\n".join(["", good[0], "{not json"]) + "\n")
    with pytest.raises(InputError, match=r"examples\.jsonl line 3: expected a JSON object, found invalid JSON \("):
        load_winoground(d)  # line numbers count the blank lines
    # the other readers keep their form: any JSON value a line, "is not valid JSON" naming what was expected
    (d / "any.jsonl").write_text('[1, 2]\n\n{"a": 1}\n{bad\n')
    lines = json_lines(d / "any.jsonl", "one thing a line")
    assert next(lines) == (1, [1, 2]) and next(lines) == (3, {"a": 1})
    with pytest.raises(InputError, match=r"any\.jsonl line 4 is not valid JSON \(.*\); expected one thing a line$"):
        next(lines)


def test_loader_missing_image(tmp_path):
    d = _make(tmp_path, "folder")
    (d / "images" / "ex_1_img_0.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"'ex_1_img_0' not found: expected file .*ex_1_img_0\.png"):
        load_winoground(d)
    assert len(load_winoground(d, limit=1)) == 1  # only the examples read are checked
    z = _make(tmp_path, "zip_root")
    rec = _record(0) | {"image_1": "ex_9_img_1"}
    (z / "examples.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(FileNotFoundError, match=r"'ex_9_img_1' not found: expected member images/ex_9_img_1\.png"):
        load_winoground(z)
    assert "ex_9_img_1" not in WinogroundImages(z) and "ex_0_img_1" in WinogroundImages(z)


def _zipped_copy(tmp_path):
    from diffusion_classifier.data.winoground import write_winoground

    images = {f"ex_0_img_{k}": Image.fromarray(np.full((8, 8, 3), 60 * k, np.uint8)) for k in (0, 1)}
    record = {"id": 0, "caption_0": "a", "caption_1": "b", "tag": "Noun", "secondary_tag": "", "num_main_preds": 1,
              "collapsed_tag": "Object", "image_0": "ex_0_img_0", "image_1": "ex_0_img_1"}
    return write_winoground(tmp_path / "wino", [record], images, zip_images=True)


def test_a_zip_cut_short_is_one_line_naming_it(tmp_path):
    from diffusion_classifier.errors import InputError

    data = _zipped_copy(tmp_path)
    raw = (data / "images.zip").read_bytes()
    (data / "images.zip").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"images\.zip is not a readable zip archive \(BadZipFile: .*\); it may be cut "
                                         r"short: download images\.zip again, or unpack the images into .*images/$"):
        load_winoground(data)


def test_a_damaged_zip_member_is_an_unreadable_image_of_that_example_only(tmp_path):
    from diffusion_classifier.data.images import UnreadableImageError

    data = _zipped_copy(tmp_path)
    with zipfile.ZipFile(data / "images.zip") as z:
        info = z.getinfo("images/ex_0_img_1.png")
    raw = bytearray((data / "images.zip").read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the member's data
    raw[start + 20] ^= 0xFF  # a flipped byte: its CRC no longer matches
    (data / "images.zip").write_bytes(bytes(raw))
    ex = load_winoground(data)[0]
    assert ex.open_image(0).size == (8, 8)
    from diffusion_classifier.data.winoground import find_unreadable_examples

    [bad] = find_unreadable_examples([ex])  # found before a run starts, as a bad header is
    assert bad.index == 0 and bad.found.startswith("a damaged zip member")
    with pytest.raises(UnreadableImageError, match=r"ex_0_img_1\.png.*a damaged zip member \(BadZipFile: Bad CRC-32"):
        ex.open_image(1)


@pytest.mark.parametrize("edit, expected", [
    (lambda r: r[2].__setitem__("id", 0), r"line 3: id 0 repeats \(first on line 1\); expected one id per example"),
    (lambda r: r[1].__setitem__("id", "ex_1"), r"line 2: field 'id' must be an integer, found 'ex_1'"),
    (lambda r: r[1].__setitem__("caption_0", None), r"line 2: caption_0 must be a string, found None"),
])
def test_loader_refuses_repeated_or_malformed_ids_and_captions(tmp_path, edit, expected):
    # a repeated id used to be scored once and counted twice; a text id or a null caption stopped with a traceback
    d = _make(tmp_path, "folder")
    records = [_record(e) for e in range(3)]
    edit(records)
    (d / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError, match=expected):
        load_winoground(d)


def test_loader_non_utf8_line_is_named(tmp_path):
    d = _make(tmp_path, "folder")
    text = "".join(json.dumps(_record(e)) + "\n" for e in range(3)).replace("a cap 2", "caf\xe9 2")
    (d / "examples.jsonl").write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match=r"examples\.jsonl line 3 is not UTF-8 text"):
        load_winoground(d)


def test_an_empty_tag_is_named_as_such():
    scores = np.zeros((2, 2, 2))
    scores[:, 0, 0] = scores[:, 1, 1] = 1.0  # both examples right
    lines = format_scores(winoground_scores(scores, ["", "Object"]))
    assert "(no tag) text score: 100.0 +/- 0.0" in lines and not any(line.startswith(" ") for line in lines)
