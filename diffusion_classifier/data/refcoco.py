"""Referring expressions (RefCOCO, RefCOCO+, RefCOCOg) as distributed: one plain `Query` per expression.

Three layouts, read offline:
- the refer release (Yu et al. 2016): DIR/<dataset>/refs(<split_by>).p, a pickle of refs {ref_id, ann_id,
  image_id, split, category_id, sentences [{sent_id, raw, ...}]}, and DIR/<dataset>/instances.json (COCO
  `images`, `annotations` with `bbox` [x, y, w, h], `categories`); the pickle is read by an unpickler that
  admits plain containers, strings and numbers only, so a doctored file is refused and runs nothing;
- the jsonl of ReCLIP and VGDiffZero: one referred object a line, {file_name, image_id, ann_id, anns [{id,
  bbox}], sentences [{raw}]};
- a local Hugging Face dataset (lmms-lab/RefCOCO: image, answer, bbox, file_name; jxu124/refcoco: raw_anns):
  rows that carry the gold box only, whose candidates come from a proposals file.
Candidates are the image's annotated objects (`gt`, the usual zero-shot protocol) or detections from a JSON
file {image_id: [[x, y, w, h], ...]} (ReCLIP's --detector_file). Boxes are [x, y, w, h] in pixels.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError, MissingError
from .entries import field, int_field, json_lines, short
from .images import decode_rgb

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}  # the refer release's default partition
IMAGE_SUBDIR = Path("images") / "mscoco" / "images" / "train2014"
EDGE_SLACK = 1.0  # pixels a box may exceed the image by (COCO's float boxes round outwards)


@dataclass(frozen=True)
class Query:
    """One referring expression: its candidates (id, [x, y, w, h]) and the gold box (and id, when a candidate)."""

    qid: str
    image: str  # the image file, or the name of a dataset row for messages
    image_id: int
    expression: str
    candidates: tuple[tuple[int, tuple[float, float, float, float]], ...]
    gold_box: tuple[float, float, float, float]
    gold: int | None = None  # the gold candidate's id (None: detections, judged by IoU only)
    category: str | None = None
    split: str | None = None
    read: Callable[[], bytes] | None = None  # the image's bytes, when it is a dataset row and not a file

    def open_image(self):
        """The image as RGB (images.decode_rgb: UnreadableImageError naming it when it cannot be decoded)."""
        return decode_rgb(self.read() if self.read is not None else self.image, self.image)


# ---------------------------------------------------------------- boxes


def as_box(value, where: str) -> tuple[float, float, float, float]:
    """[x, y, w, h] as four finite floats with w, h > 0; InputError naming `where` otherwise."""
    if not isinstance(value, (list, tuple)) or len(value) < 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value[:4]):
        raise InputError(f"{where}: expected a box [x, y, w, h] of numbers, found {short(value)}")
    x, y, w, h = (float(v) for v in value[:4])
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise InputError(f"{where}: expected a box [x, y, w, h] of finite numbers, found {short(value)}")
    if w <= 0 or h <= 0:
        raise InputError(f"{where}: box {short(value)} has zero or negative size; expected w > 0 and h > 0")
    return x, y, w, h


def box_problem(box, width: int, height: int) -> str | None:
    """What is wrong with a box on a width x height image (outside it beyond EDGE_SLACK), or None."""
    x, y, w, h = box
    if x < -EDGE_SLACK or y < -EDGE_SLACK or x + w > width + EDGE_SLACK or y + h > height + EDGE_SLACK:
        return f"box [{x:g}, {y:g}, {w:g}, {h:g}] lies outside the {width}x{height} image"
    return None


def iou(a, b) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


# ---------------------------------------------------------------- proposals


def read_proposals(path: str | Path) -> dict[int, list[tuple[float, float, float, float]]]:
    """Detections {image_id: [[x, y, w, h, (score)], ...]} from a JSON file (ReCLIP's --detector_file)."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"proposals file {path} does not exist; expected a JSON file {{image_id: [[x, y, w, h], ...]}}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"proposals file {path} is not valid JSON ({e}); expected {{image_id: [[x, y, w, h], ...]}}") from None
    if not isinstance(data, dict):
        raise InputError(f"proposals file {path}: expected an object {{image_id: [[x, y, w, h], ...]}}, found a "
                         f"{type(data).__name__}")
    out = {}
    for key, boxes in data.items():
        if not str(key).lstrip("-").isdigit() or not isinstance(boxes, list):
            raise InputError(f"proposals file {path}: entry {short(key)} must map an integer image id to a list of "
                             f"boxes, found {short(boxes)}")
        out[int(key)] = [as_box(b, f"proposals file {path}, image {key}, box {j}") for j, b in enumerate(boxes)]
    return out


def _candidates(gt: list, image_id: int, proposals: dict | None, where: str, no_gt: str) -> tuple:
    """(candidates, gold id) from the ground-truth objects or the proposals of an image."""
    if proposals is None:
        if not gt:
            raise InputError(f"{where}: {no_gt}")
        return tuple(gt)
    if image_id not in proposals or not proposals[image_id]:
        raise InputError(f"{where}: the proposals file has no box for image {image_id}; expected at least one")
    return tuple(enumerate(proposals[image_id]))


# ---------------------------------------------------------------- the refer release


class PlainUnpickler(pickle.Unpickler):
    """An unpickler that admits plain containers, strings and numbers only: every global is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def load_plain_pickle(path: Path, expected: str):
    """A pickle of plain data; InputError naming the file and what was expected when it holds anything else."""
    try:
        with open(path, "rb") as f:
            return PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError) as e:
        raise InputError(f"{path} is refused ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         f"expected a pickle of {expected} (plain lists, dicts, strings and numbers only)") from None


def refer_files(root: str | Path, dataset: str, split_by: str | None = None) -> tuple[Path, Path]:
    """(refs(<split_by>).p, instances.json) of a dataset in the refer release's layout under root."""
    folder = Path(root).expanduser() / dataset
    split_by = split_by or SPLIT_BY.get(dataset, "unc")
    refs, instances = folder / f"refs({split_by}).p", folder / "instances.json"
    for path in (refs, instances):
        if not path.is_file():
            found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
            raise MissingError(f"{path} does not exist (found: {found}); expected the refer release's layout "
                               f"DIR/{dataset}/refs({split_by}).p and DIR/{dataset}/instances.json")
    return refs, instances


def _check_on_image(box, size, where: str) -> None:
    if size is not None:
        problem = box_problem(box, *size)
        if problem:
            raise InputError(f"{where}: {problem}; expected boxes [x, y, w, h] within the image")


def read_refer(root: str | Path, dataset: str, split: str, split_by: str | None = None,
               image_root: str | Path | None = None, proposals: dict | None = None) -> list[Query]:
    """The queries of one split of RefCOCO/RefCOCO+/RefCOCOg in the refer release's layout, one per sentence."""
    refs_path, inst_path = refer_files(root, dataset, split_by)
    refs = load_plain_pickle(refs_path, "refs: a list of dicts with ref_id, ann_id, image_id, split, sentences")
    if not isinstance(refs, list):
        raise InputError(f"{refs_path}: expected a list of refs, found a {type(refs).__name__}")
    try:
        inst = json.loads(inst_path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{inst_path} is not valid JSON ({e}); expected COCO instances (images, annotations, "
                         f"categories)") from None
    for key in ("images", "annotations"):
        field(inst, key, str(inst_path), list)
    images = {int_field(im, "id", f"{inst_path} images"): im for im in inst["images"]}
    cats = {c.get("id"): c.get("name") for c in inst.get("categories", []) if isinstance(c, dict)}
    by_image: dict[int, list] = {}
    anns = {}
    for a in inst["annotations"]:
        where = f"{inst_path} annotation {a.get('id') if isinstance(a, dict) else '?'}"
        ann_id = int_field(a, "id", where)
        box = as_box(field(a, "bbox", where), where)
        anns[ann_id] = (box, a.get("category_id"))
        by_image.setdefault(int_field(a, "image_id", where), []).append((ann_id, box))
    image_dir = Path(image_root).expanduser() if image_root else Path(root).expanduser() / IMAGE_SUBDIR
    splits = sorted({str(r.get("split")) for r in refs if isinstance(r, dict)})
    chosen = [r for r in refs if isinstance(r, dict) and r.get("split") == split]
    if not chosen:
        raise InputError(f"{refs_path} has no ref in split {split!r}; its splits are {', '.join(splits) or 'none'}")
    queries = []
    for r in chosen:
        where = f"{refs_path} ref {r.get('ref_id')}"
        ann_id, image_id = int_field(r, "ann_id", where), int_field(r, "image_id", where)
        if ann_id not in anns:
            raise InputError(f"{where}: ann_id {ann_id} is not in {inst_path}; expected every ref's annotation there")
        if image_id not in images:
            raise InputError(f"{where}: image_id {image_id} is not in {inst_path}; expected every ref's image there")
        im = images[image_id]
        size = (int_field(im, "width", where), int_field(im, "height", where)) if "width" in im and "height" in im \
            else None
        gt = by_image.get(image_id, [])
        for cid, box in gt:
            _check_on_image(box, size, f"{inst_path} annotation {cid}")
        cands = _candidates(gt, image_id, proposals, where, "its image has no annotated object")
        name = str(field(im, "file_name", f"{inst_path} image {image_id}"))
        cat = r.get("category_id", anns[ann_id][1])
        for k, s in enumerate(field(r, "sentences", where, list)):
            raw = field(s, "raw", f"{where} sentence {k}", str)
            qid = str(s["sent_id"]) if isinstance(s, dict) and "sent_id" in s else f"{ann_id}_{k}"
            queries.append(Query(qid, str(image_dir / name), image_id, raw, cands, anns[ann_id][0],
                                 ann_id if proposals is None else None, cats.get(cat, None if cat is None else str(cat)),
                                 split))
    return queries


# ---------------------------------------------------------------- ReCLIP / VGDiffZero jsonl

ANN_SUFFIX = re.compile(r"_\d+(\.[A-Za-z0-9]+)$")


def jsonl_image(image_root: Path, file_name: str) -> Path:
    """The image of a jsonl line: file_name as given when it exists, else without its trailing _<ann id>."""
    given = image_root / file_name
    return given if given.is_file() else image_root / ANN_SUFFIX.sub(r"\1", file_name)


def read_jsonl(path: str | Path, image_root: str | Path, proposals: dict | None = None,
               split: str | None = None) -> list[Query]:
    """The queries of a ReCLIP/VGDiffZero jsonl file: one referred object a line, one query per sentence."""
    path, image_root = Path(path).expanduser(), Path(image_root).expanduser()
    if not path.is_file():
        raise MissingError(f"--data_path {path} does not exist; expected a jsonl file, one referred object a line "
                           f"(file_name, image_id, ann_id, anns, sentences)")
    queries = []
    for n, obj in json_lines(path, "one object a line"):
        where = f"{path} line {n}"
        file_name = str(field(obj, "file_name", where))
        image_id, ann_id = int_field(obj, "image_id", where), int_field(obj, "ann_id", where)
        size = (int_field(obj, "width", where), int_field(obj, "height", where)) \
            if "width" in obj and "height" in obj else None
        gt = []
        for j, a in enumerate(field(obj, "anns", where, list)):
            aw = f"{where} anns[{j}]"
            box = as_box(field(a, "bbox", aw), aw)
            _check_on_image(box, size, aw)
            gt.append((int_field(a, "id", aw), box))
        gold = dict(gt).get(ann_id)
        if gold is None:
            raise InputError(f"{where}: ann_id {ann_id} is not among its anns ids {[i for i, _ in gt]}; expected "
                             f"the gold object among the candidates")
        cands = _candidates(gt, image_id, proposals, where, "anns is empty")
        image = str(jsonl_image(image_root, file_name))
        for k, s in enumerate(field(obj, "sentences", where, list)):
            raw = field(s, "raw", f"{where} sentences[{k}]", str)
            qid = str(s["sent_id"]) if isinstance(s, dict) and "sent_id" in s else f"{ann_id}_{k}"
            queries.append(Query(qid, image, image_id, raw, cands, gold, ann_id if proposals is None else None,
                                 obj.get("category") or obj.get("category_name"), obj.get("split", split)))
    if not queries:
        raise InputError(f"{path} holds no query; expected one referred object a line with at least one sentence")
    return queries


# ---------------------------------------------------------------- Hugging Face layouts


def _row_image_id(row: dict, where: str) -> int:
    if row.get("image_id") is not None:
        return int_field(row, "image_id", where)
    digits = re.findall(r"\d+", Path(str(row.get("file_name", ""))).stem)
    if not digits:
        raise InputError(f"{where}: no image_id column and no number in file_name {row.get('file_name')!r}; expected "
                         f"one of them to match the proposals file")
    return int(digits[0] if len(digits) == 1 else max(digits, key=len))


def _row_expressions(row: dict, where: str) -> list[str]:
    for key in ("answer", "captions", "sentences", "expression", "raw"):
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.startswith(("[", "{")) else value
            except ValueError:
                pass
        values = value if isinstance(value, list) else [value]
        out = [v["raw"] if isinstance(v, dict) and "raw" in v else v for v in values]
        if all(isinstance(v, str) for v in out) and out:
            return out
    raise InputError(f"{where}: no expression; expected a column answer, captions, sentences or expression")


def _row_gold(row: dict, where: str):
    """(gold box, gold ann id or None) of a row: its bbox column, or raw_anns (jxu124/refcoco)."""
    raw = row.get("raw_anns")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if isinstance(raw, dict) and "bbox" in raw:
        return as_box(raw["bbox"], f"{where} raw_anns"), raw.get("id")
    if row.get("bbox") is None:
        raise InputError(f"{where}: no gold box; expected a column bbox [x, y, w, h] or raw_anns")
    return as_box(row["bbox"], f"{where} bbox"), row.get("ann_id")


def read_hf(root: str | Path, split: str, image_root: str | Path | None = None,
            proposals: dict | None = None) -> list[Query]:
    """The queries of one split of a local Hugging Face dataset of referring expressions (hf.read_split)."""
    from .hf import cell_reader, read_split

    root = Path(root).expanduser()
    data, where_split = read_split(root, split)
    columns = list(data.features)
    has_image = "image" in columns
    if has_image:
        lib = __import__("datasets")
        if isinstance(data.features["image"], lib.Image):
            data = data.cast_column("image", lib.Image(decode=False))
    if proposals is None and "anns" not in columns:
        raise InputError(f"{where_split}: its rows carry only the gold box, so there are no candidates to choose "
                         f"from; pass --proposals FILE (detections {{image_id: [[x, y, w, h], ...]}})")
    image_dir = Path(image_root).expanduser() if image_root else None
    queries = []
    for i, row in enumerate(data.with_format(None)):
        where = f"{where_split} row {i}"
        image_id = _row_image_id(row, where)
        gold_box, gold_id = _row_gold(row, where)
        gt = [(int(field(a, "id", f"{where} anns")), as_box(field(a, "bbox", f"{where} anns"), f"{where} anns"))
              for a in row.get("anns") or []]
        cands = _candidates(gt, image_id, proposals, where, "anns is empty")
        if has_image and row["image"] is not None:
            cell = row["image"]
            name = f"{where}" + (f" ({cell.get('path')})" if cell.get("path") else "")
            read = cell_reader(cell, name)
        else:
            file_name = row.get("image_path") or row.get("file_name")
            if file_name is None:
                raise InputError(f"{where}: no image; expected an image column, or file_name with --image_root")
            name, read = str((image_dir or root) / str(file_name)), None
        base = row.get("question_id", row.get("ref_id", i))
        for k, expr in enumerate(_row_expressions(row, where)):
            queries.append(Query(f"{base}_{k}", name, image_id, expr, cands, gold_box,
                                 gold_id if proposals is None else None,
                                 row.get("category") or row.get("category_name"), split, read))
    return queries

