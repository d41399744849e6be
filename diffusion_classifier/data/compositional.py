"""Image-text matching benchmarks as distributed: one plain `Item` per question.

An item is either text retrieval (one image, several captions, the label the true caption) or image
retrieval (several images, one caption, the label the true image), with the task it belongs to (for
per-task tables). Layouts, read offline:
- a generic jsonl, one item a line: {"image": PATH, "captions": [...], "label": i} (text retrieval) or
  {"images": [PATH, ...], "caption": TEXT, "label": i} (image retrieval); paths relative to the file's
  folder (or --image_root); optional "id" and "task";
- a local Hugging Face dataset with named columns (hf.read_split);
- SugarCrepe: one json per split ({"0": {"filename", "caption", "negative_caption"}, ...}), the task is the
  file's stem; images in COCO val2017 (--image_root);
- ARO's VG-Relation / VG-Attribution: a json list of {image_path, bbox_x, bbox_y, bbox_w, bbox_h,
  true_caption, false_caption, relation_name | attributes}; the image is cropped to the box, as ARO does;
- What'sUp: a json list of {image_path, caption_options} (the first caption true), or of
  [image, true caption, false caption, ...] (COCO-/GQA-spatial; an integer image is COCO's %012d.jpg);
- GenEval-style folders (Jeong et al. 2025, Self-Bench): DIR/<index>/metadata.jsonl ({tag, include, prompt})
  and DIR/<index>/samples/*.png, with candidate prompts from zero_shot_prompts.json[<domain>][<tag>]
  (a list, or nested by the included classes); the label is the metadata's prompt among them.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from ..errors import InputError, MissingError, warn
from .entries import field, json_lines, load_json, short
from .images import decode_rgb

TEXT, IMAGE = "text", "image"  # text retrieval: captions are the candidates; image retrieval: images are
LAYOUTS = ("jsonl", "hf", "sugarcrepe", "vg_relation", "vg_attribution", "whatsup", "geneval")
GENEVAL_PROMPTS = "zero_shot_prompts.json"


@dataclass(frozen=True)
class ImageSource:
    """One image: its file (or the name of a dataset row), its bytes when not a file, a box to crop to [x, y, w, h]."""

    name: str
    read: Callable[[], bytes] | None = None
    box: tuple[float, float, float, float] | None = None

    def open(self) -> Image.Image:
        """The image as RGB, cropped to its box (images.decode_rgb: UnreadableImageError naming it)."""
        image = decode_rgb(self.read() if self.read is not None else self.name, self.name)
        if self.box is None:
            return image
        x, y, w, h = self.box
        return image.crop((round(x), round(y), round(x + w), round(y + h)))


@dataclass(frozen=True)
class Item:
    """One question: text retrieval (one image, captions) or image retrieval (images, one caption)."""

    id: str
    task: str
    kind: str  # TEXT or IMAGE
    images: tuple[ImageSource, ...]
    captions: tuple[str, ...]
    label: int

    @property
    def n_candidates(self) -> int:
        return len(self.captions) if self.kind == TEXT else len(self.images)


def make_item(id: str, task: str, kind: str, images, captions, label, where: str) -> Item:
    """An Item with its fields checked; InputError naming `where` otherwise."""
    images, captions = tuple(images), tuple(captions)
    if not all(isinstance(c, str) for c in captions):
        raise InputError(f"{where}: captions must be strings, found {short(list(captions))}")
    n = len(captions) if kind == TEXT else len(images)
    if n < 2:
        what = "captions for its image" if kind == TEXT else "images for its caption"
        raise InputError(f"{where}: expected at least 2 {what}, found {n}")
    if isinstance(label, float) and label.is_integer():
        label = int(label)  # 1.0, as JSON writers and pandas may give an integer
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
        raise InputError(f"{where}: label must be an integer in 0..{n - 1}, found {short(label)}")
    return Item(str(id), str(task), kind, images, captions, int(label))


def _correct_one_repeated(item: Item) -> bool:
    """Whether the item's correct candidate appears again among its candidates: the copies get the same scores, so
    which one wins is the tie's order, not the model."""
    candidates = item.captions if item.kind == TEXT else [(i.name, i.box) for i in item.images]
    return list(candidates).count(candidates[item.label]) > 1


def _unique(items: list[Item], where: Path | str) -> list[Item]:
    """The items, their ids checked unique; items whose correct candidate repeats are left out with a warning."""
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"{where}: item id {dup!r} repeats; expected one id per item")
    tied = [_correct_one_repeated(i) for i in items]
    if any(tied):
        first = items[tied.index(True)]
        what = "caption" if first.kind == TEXT else "image"
        warn(f"{where}: {sum(tied)} item(s) left out: the correct candidate appears twice among its candidates, so no "
             f"model can pick it (first: item {first.id!r}, its {what} "
             f"{short(first.captions[first.label] if what == 'caption' else first.images[first.label].name)})")
        items = [i for i, t in zip(items, tied) if not t]
    if not items:
        raise InputError(f"{where} holds no item" + (" that can be scored" if any(tied) else ""))
    return items


# ---------------------------------------------------------------- the generic jsonl

JSONL_EXPECTED = ('one object a line: {"image": PATH, "captions": [...], "label": i} or '
                  '{"images": [PATH, ...], "caption": TEXT, "label": i}')


def read_jsonl(path: str | Path, image_root: str | Path | None = None) -> list[Item]:
    """The items of a generic jsonl file; image paths relative to image_root (default: the file's folder)."""
    path = Path(path).expanduser()
    root = Path(image_root).expanduser() if image_root else path.parent
    items = []
    for n, obj in json_lines(path, JSONL_EXPECTED):
        where = f"{path} line {n}"
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected {JSONL_EXPECTED}, found {short(obj)}")
        if "image" in obj and "captions" in obj:
            kind, images = TEXT, [field(obj, "image", where, str)]
            captions = field(obj, "captions", where, list)
        elif "images" in obj and "caption" in obj:
            kind, images = IMAGE, field(obj, "images", where, list)
            captions = [field(obj, "caption", where, str)]
            if not all(isinstance(p, str) for p in images):
                raise InputError(f"{where}: field 'images' must be a list of paths, found {short(images)}")
        else:
            raise InputError(f"{where}: expected {JSONL_EXPECTED}, found keys {sorted(obj)}")
        task = obj.get("task")
        items.append(make_item(obj.get("id", n), path.stem if task is None else task, kind,
                               [ImageSource(str(root / p)) for p in images], captions, field(obj, "label", where),
                               where))
    return _unique(items, path)


# ---------------------------------------------------------------- Hugging Face datasets on disk


def _pick(columns: list[str], given, defaults: tuple[str, ...], flag: str, where: str, required: bool = True):
    if given:
        missing = [g for g in given if g not in columns]
        if missing:
            raise InputError(f"{where}: no column {missing[0]!r} for {flag}; the columns are {', '.join(columns)}")
        return list(given)
    for name in defaults:
        if name in columns:
            return [name]
    if required:
        raise InputError(f"{where}: none of the columns {', '.join(columns)} is named {' or '.join(defaults)}: "
                         f"pass {flag} NAME")
    return []


def read_hf(root: str | Path, split: str, image_column: str | None = None, caption_columns=None,
            label_column: str | None = None, task_column: str | None = None) -> list[Item]:
    """The items of one split of a local Hugging Face dataset: an image column (one image: text retrieval; a list
    of images: image retrieval), the captions (one list column, or several string columns), a label column
    (absent: 0, the first caption or image is the true one) and an optional task column."""
    from .hf import cell_reader, read_split

    data, where_split = read_split(root, split)
    columns = list(data.features)
    [image_col] = _pick(columns, [image_column] if image_column else None, ("image", "images"), "--image_column",
                        where_split)
    caption_cols = _pick(columns, caption_columns, ("captions", "caption", "texts", "text"), "--caption_column",
                         where_split)
    label_cols = _pick(columns, [label_column] if label_column else None, ("label", "labels"), "--label_column",
                       where_split, required=False)
    task_cols = _pick(columns, [task_column] if task_column else None, ("task",), "--task_column", where_split,
                      required=False)
    table = data.with_format("arrow")  # raw cells: encoded images stay {bytes, path}, nothing is decoded
    cols = {c: table[c].to_pylist() for c in {image_col, *caption_cols, *label_cols, *task_cols}}
    items = []
    for i in range(len(data)):
        where = f"{where_split} row {i}"
        cell = cols[image_col][i]
        if len(caption_cols) > 1:
            captions = [cols[c][i] for c in caption_cols]
        else:
            captions = cols[caption_cols[0]][i]
        if isinstance(cell, list):
            kind, cells = IMAGE, cell
            if not isinstance(captions, str):
                raise InputError(f"{where}: a list of images needs one caption (a string) in column "
                                 f"{caption_cols[0]!r}, found {short(captions)}")
            captions = [captions]
        else:
            kind, cells = TEXT, [cell]
            if not isinstance(captions, list):
                raise InputError(f"{where}: one image needs a list of captions in column {caption_cols[0]!r} (or "
                                 f"several --caption_column), found {short(captions)}")
        sources = []
        for k, c in enumerate(cells):
            if not isinstance(c, dict):
                raise InputError(f"{where}: column {image_col!r} holds {short(c)}, not an encoded image; expected "
                                 f"an Image feature (or a list of them): pass --image_column NAME")
            name = f"{where}" + (f" image {k}" if kind == IMAGE else "") + (f" ({c['path']})" if c.get("path") else "")
            sources.append(ImageSource(name, cell_reader(c, name)))
        label = cols[label_cols[0]][i] if label_cols else 0
        task = cols[task_cols[0]][i] if task_cols else None
        task = Path(str(root)).name if task is None else task  # a row without one: the folder's name
        items.append(make_item(i, task, kind, sources, captions, label, where))
    return _unique(items, where_split)


# ---------------------------------------------------------------- SugarCrepe

SUGARCREPE_EXPECTED = '{"0": {"filename": ..., "caption": ..., "negative_caption": ...}, ...}'


def read_sugarcrepe(path: str | Path, image_root: str | Path) -> list[Item]:
    """SugarCrepe: a split's json (task = its stem), or a folder of them; the positive caption is label 0."""
    path, root = Path(path).expanduser(), Path(image_root).expanduser()
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise MissingError(f"{path} holds no .json file; expected SugarCrepe's split files (add_att.json, ...)")
    items = []
    for file in files:
        data = load_json(file, SUGARCREPE_EXPECTED)
        if not isinstance(data, dict):
            raise InputError(f"{file}: expected an object {SUGARCREPE_EXPECTED}, found a {type(data).__name__}")
        for key, obj in data.items():
            where = f"{file} item {key}"
            image = root / str(field(obj, "filename", where))
            captions = [field(obj, "caption", where, str), field(obj, "negative_caption", where, str)]
            items.append(make_item(f"{file.stem}_{key}", file.stem, TEXT, [ImageSource(str(image))], captions, 0,
                                   where))
    return _unique(items, path)


# ---------------------------------------------------------------- ARO: VG-Relation, VG-Attribution

ARO_EXPECTED = "a json list of {image_path, bbox_x, bbox_y, bbox_w, bbox_h, true_caption, false_caption}"


def _json_list(path: str | Path, image_root: str | Path | None, expected: str) -> tuple[Path, Path, list]:
    """(the file, the folder its image paths are relative to, its entries) of a json file holding a list."""
    path = Path(path).expanduser()
    root = Path(image_root).expanduser() if image_root else path.parent
    data = load_json(path, expected)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected {expected}, found a {type(data).__name__}")
    return path, root, data


def read_aro(path: str | Path, image_root: str | Path | None = None, which: str = "vg_relation") -> list[Item]:
    """ARO's VG-Relation (task = relation_name) or VG-Attribution (task = its two attributes): the image cropped
    to the box, the true caption label 0."""
    path, root, data = _json_list(path, image_root, ARO_EXPECTED)
    items = []
    for n, obj in enumerate(data):
        where = f"{path} item {n}"
        box = tuple(_number(field(obj, f"bbox_{k}", where), f"{where} bbox_{k}") for k in "xywh")
        if box[2] <= 0 or box[3] <= 0:
            raise InputError(f"{where}: box {list(box)} has zero or negative size; expected bbox_w, bbox_h > 0")
        if which == "vg_relation":
            task = str(field(obj, "relation_name", where))
        else:
            attributes = field(obj, "attributes", where, list)
            task = "-".join(map(str, attributes))
        captions = [field(obj, "true_caption", where, str), field(obj, "false_caption", where, str)]
        image = ImageSource(str(root / str(field(obj, "image_path", where))), box=box)
        items.append(make_item(n, task, TEXT, [image], captions, 0, where))
    return _unique(items, path)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: expected a number, found {short(value)}")
    return float(value)


# ---------------------------------------------------------------- What'sUp

WHATSUP_EXPECTED = "a json list of {image_path, caption_options} or of [image, true caption, false caption, ...]"


def read_whatsup(path: str | Path, image_root: str | Path | None = None) -> list[Item]:
    """What'sUp: the first caption option is true (label 0); task = the file's stem."""
    path, root, data = _json_list(path, image_root, WHATSUP_EXPECTED)
    items = []
    for n, obj in enumerate(data):
        where = f"{path} item {n}"
        if isinstance(obj, dict):
            image, captions = str(field(obj, "image_path", where)), field(obj, "caption_options", where, list)
        elif isinstance(obj, list) and len(obj) >= 3:
            image, captions = obj[0], obj[1:]
            if isinstance(image, int) and not isinstance(image, bool):
                image = f"{image:012d}.jpg"  # COCO-spatial: a COCO val2017 image id
            elif not isinstance(image, str):
                raise InputError(f"{where}: expected an image path or COCO id first, found {short(image)}")
        else:
            raise InputError(f"{where}: expected {WHATSUP_EXPECTED}, found {short(obj)}")
        items.append(make_item(n, path.stem, TEXT, [ImageSource(str(root / image))], captions, 0, where))
    return _unique(items, path)


# ---------------------------------------------------------------- GenEval-style folders (Self-Bench)


def _geneval_candidates(table, include: list):
    """The candidate prompt lists of a tag: the list itself, or the lists under the item's included classes (in
    either order)."""
    if isinstance(table, list):
        yield table
        return
    classes = [str(c.get("class")) for c in include if isinstance(c, dict)]
    for depth in (1, 2):
        for names in itertools.permutations(classes, depth):
            node = table
            for name in names:
                node = node.get(name) if isinstance(node, dict) else None
            if isinstance(node, list):
                yield node


def read_geneval(root: str | Path, prompts_file: str | Path | None = None, domain: str = "photo") -> list[Item]:
    """GenEval-style folders: every sample image of DIR/<index>/ is one text-retrieval item whose captions are the
    candidate prompts of its tag (task) in zero_shot_prompts.json[domain]; the label is its metadata's prompt."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingError(f"{root} is not a folder; expected GenEval-style folders DIR/<index>/metadata.jsonl")
    if prompts_file is None:
        found = [p for p in (root / GENEVAL_PROMPTS, root.parent / "prompts" / GENEVAL_PROMPTS) if p.is_file()]
        prompts_file = found[0] if found else root / GENEVAL_PROMPTS
    prompts_file = Path(prompts_file).expanduser()
    table = load_json(prompts_file, "{domain: {tag: [prompts] or {class: [prompts]} or {class: {class: [prompts]}}}}")
    if not isinstance(table, dict) or domain not in table:
        raise InputError(f"{prompts_file}: no domain {domain!r}; its domains are "
                         f"{', '.join(table) if isinstance(table, dict) else 'none'}: pass --domain NAME")
    if not isinstance(table[domain], dict):
        raise InputError(f"{prompts_file}: expected {{tag: prompts}} under domain {domain!r}, found "
                         f"{short(table[domain])}")
    folders = sorted(p for p in root.iterdir() if (p / "metadata.jsonl").is_file())
    if not folders:
        raise MissingError(f"{root} has no <index>/metadata.jsonl; expected GenEval-style folders "
                           f"DIR/<index>/metadata.jsonl and DIR/<index>/samples/*.png")
    items = []
    for folder in folders:
        meta_path = folder / "metadata.jsonl"
        lines = list(json_lines(meta_path, "one object {tag, include, prompt}"))
        if not lines:
            raise InputError(f"{meta_path} is empty; expected one object {{tag, include, prompt}}")
        n, meta = lines[0]
        where = f"{meta_path} line {n}"
        tag, prompt = str(field(meta, "tag", where)), str(field(meta, "prompt", where))
        if tag not in table[domain]:
            raise InputError(f"{where}: tag {tag!r} is not in {prompts_file}[{domain!r}]; its tags are "
                             f"{', '.join(table[domain])}")
        include = meta.get("include") or []
        if not isinstance(include, list):
            raise InputError(f"{where}: field 'include' must be a list of {{\"class\": NAME}}, found {short(include)}")
        captions = next((c for c in _geneval_candidates(table[domain][tag], include) if prompt in c), None)
        if captions is None:
            raise InputError(f"{where}: prompt {prompt!r} is not among the candidate prompts of {prompts_file}"
                             f"[{domain!r}][{tag!r}]; expected the metadata's prompt among them")
        samples = sorted(p for p in (folder / "samples").glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not samples:
            raise MissingError(f"{folder / 'samples'} holds no image; expected the generated samples (0000.png, ...)")
        for s in samples:
            items.append(make_item(f"{folder.name}_{s.stem}", tag, TEXT, [ImageSource(str(s))], captions,
                                   captions.index(prompt), where))
    return _unique(items, root)
