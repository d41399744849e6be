"""Winoground (Thrush et al., 2022): a local copy of the data, and the text/image/group scores."""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HUB_URL = "https://huggingface.co/datasets/facebook/winoground"
EXAMPLE_KEYS = (
    "id", "caption_0", "caption_1", "tag", "secondary_tag", "num_main_preds", "collapsed_tag",
    "image_0", "image_1",
)
TAG_ORDER = ("Overall", "Object", "Relation", "Both")
KINDS = ("text", "image", "group")
Z95 = 1.96


def _how_to_obtain(data_dir: Path) -> str:
    return (f"Winoground is gated on the hub: accept the terms at {HUB_URL}, download examples.jsonl "
            f"and images.zip into {data_dir}, and pass --data_dir {data_dir}")


class WinogroundImages:
    """Reads `<name>.png` from `data_dir/images/` or from `data_dir/images.zip`; the zip is opened lazily."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.folder = self.data_dir / "images"
        self.zip_path = self.data_dir / "images.zip"
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] | None = None  # image name -> zip member
        if self.folder.is_dir():
            self.zip_path = None
        elif self.zip_path.is_file():
            self.folder = None
        else:
            raise FileNotFoundError(f"no Winoground images: expected a folder {self.folder} or a zip "
                                    f"{self.zip_path}; {_how_to_obtain(self.data_dir)}")

    def _open_zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.zip_path)
            members = {}
            for member in self._zip.namelist():
                parent, _, base = member.rpartition("/")
                # the hub zip stores images/<name>.png; re-zipped copies often put <name>.png at the root
                if parent in ("", "images") and base.endswith(".png"):
                    members.setdefault(base[: -len(".png")], member)
            self._members = members
        return self._zip

    def source(self, name: str) -> str:
        """Where image `name` is read from (a file path, or 'zip:member'); FileNotFoundError if absent."""
        if self.folder is not None:
            path = self.folder / f"{name}.png"
            if not path.is_file():
                raise FileNotFoundError(f"Winoground image {name!r} not found: expected file {path}")
            return str(path)
        self._open_zip()
        if name not in self._members:
            raise FileNotFoundError(f"Winoground image {name!r} not found: expected member "
                                    f"images/{name}.png or {name}.png in {self.zip_path}")
        return f"{self.zip_path}:{self._members[name]}"

    def __contains__(self, name: str) -> bool:
        try:
            self.source(name)
        except FileNotFoundError:
            return False
        return True

    def open(self, name: str) -> Image.Image:
        """The image `name` as a loaded PIL RGB image."""
        self.source(name)  # raises a clear FileNotFoundError if it is absent
        if self.folder is not None:
            with Image.open(self.folder / f"{name}.png") as im:
                return im.convert("RGB")
        data = self._open_zip().read(self._members[name])
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None
            self._members = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        # a zip handle cannot cross a process boundary (DataLoader workers); reopen it there
        state = self.__dict__.copy()
        state["_zip"] = None
        state["_members"] = None
        return state


@dataclass
class WinogroundExample:
    """One Winoground example: two captions, two image names and its tags; images open lazily."""

    id: int
    caption_0: str
    caption_1: str
    tag: str
    secondary_tag: str
    num_main_preds: int
    collapsed_tag: str
    image_0: str
    image_1: str
    images: WinogroundImages | None = field(default=None, repr=False, compare=False)

    def caption(self, k: int) -> str:
        """Caption k (0 or 1)."""
        if k not in (0, 1):
            raise ValueError(f"caption index must be 0 or 1, got {k!r}")
        return self.caption_1 if k else self.caption_0

    def image_name(self, k: int) -> str:
        """Name of image k (0 or 1)."""
        if k not in (0, 1):
            raise ValueError(f"image index must be 0 or 1, got {k!r}")
        return self.image_1 if k else self.image_0

    def open_image(self, k: int) -> Image.Image:
        """Image k (0 or 1) as a PIL RGB image."""
        name = self.image_name(k)
        if self.images is None:
            raise ValueError(f"example {self.id} has no image reader; expected one from load_winoground, found None")
        return self.images.open(name)


def load_winoground(data_dir: str | os.PathLike, limit: int | None = None) -> list[WinogroundExample]:
    """The examples of a local Winoground copy (examples.jsonl plus images/ or images.zip), in file order."""
    data_dir = Path(data_dir)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Winoground data directory {data_dir} does not exist; {_how_to_obtain(data_dir)}")
    jsonl = data_dir / "examples.jsonl"
    if not jsonl.is_file():
        raise FileNotFoundError(f"Winoground metadata {jsonl} not found; {_how_to_obtain(data_dir)}")
    images = WinogroundImages(data_dir)

    examples = []
    with open(jsonl, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{jsonl} line {lineno}: expected a JSON object, found invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{jsonl} line {lineno}: expected a JSON object, found {type(record).__name__}")
            missing = [k for k in EXAMPLE_KEYS if k not in record]
            if missing:
                raise ValueError(f"{jsonl} line {lineno}: missing keys {', '.join(missing)}")
            ex = WinogroundExample(**{k: record[k] for k in EXAMPLE_KEYS}, images=images)
            for k in (0, 1):
                images.source(ex.image_name(k))  # fail now, not hours into an evaluation
            examples.append(ex)
            if limit is not None and len(examples) == limit:
                break
    return examples


def _as_scores(scores) -> np.ndarray:
    """Scores as a float64 array (..., caption, image) with trailing shape (2, 2)."""
    if hasattr(scores, "detach"):  # torch tensor, possibly on GPU or in bf16
        scores = scores.detach().cpu().double().numpy()
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim < 2 or s.shape[-2:] != (2, 2):
        raise ValueError(f"Winoground scores must have shape (..., 2, 2) indexed [caption, image], got {s.shape}")
    return s


def text_correct(scores) -> np.ndarray:
    """Per example: each image prefers its own caption, s[0,0] > s[1,0] and s[1,1] > s[0,1] (ties are wrong)."""
    s = _as_scores(scores)
    return (s[..., 0, 0] > s[..., 1, 0]) & (s[..., 1, 1] > s[..., 0, 1])


def image_correct(scores) -> np.ndarray:
    """Per example: each caption prefers its own image, s[0,0] > s[0,1] and s[1,1] > s[1,0] (ties are wrong)."""
    s = _as_scores(scores)
    return (s[..., 0, 0] > s[..., 0, 1]) & (s[..., 1, 1] > s[..., 1, 0])


def group_correct(scores) -> np.ndarray:
    """Per example: both text and image correct."""
    return text_correct(scores) & image_correct(scores)


def _summary(correct: np.ndarray) -> dict:
    n = int(correct.size)
    p = float(correct.mean())
    return {"score": 100.0 * p, "ci95": 100.0 * Z95 * math.sqrt(p * (1.0 - p) / n), "n": n}


def winoground_scores(scores, tags: list[str]) -> dict:
    """Text/image/group score in percent with a normal 95% interval, overall and per collapsed tag.

    scores: (N, 2, 2) indexed [example, caption, image], higher = better match; tags: N collapsed tags.
    Returns {tag: {kind: {"score", "ci95", "n"}}} for "Overall", then Object, Relation, Both, then others.
    """
    s = _as_scores(scores)
    if s.ndim != 3 or s.shape[0] == 0:
        raise ValueError(f"Winoground scores must have shape (N, 2, 2) with N >= 1, got {s.shape}")
    tags = list(tags)
    if len(tags) != s.shape[0]:
        raise ValueError(f"expected one tag per example ({s.shape[0]}), got {len(tags)} tags")
    correct = {"text": text_correct(s), "image": image_correct(s), "group": group_correct(s)}
    tag_arr = np.asarray(tags, dtype=object)
    present = set(tags)
    order = ["Overall"] + [t for t in TAG_ORDER[1:] if t in present]
    order += sorted(present - set(order))
    result = {}
    for tag in order:
        mask = np.ones(len(tags), dtype=bool) if tag == "Overall" else tag_arr == tag
        result[tag] = {kind: _summary(c[mask]) for kind, c in correct.items()}
    return result


def format_scores(result: dict) -> list[str]:
    """Lines like 'Overall text score: 38.5 +/- 4.8', per tag and kind, in the order of `result`."""
    return [f"{tag} {kind} score: {by_kind[kind]['score']:.1f} +/- {by_kind[kind]['ci95']:.1f}"
            for tag, by_kind in result.items() for kind in KINDS]


def normalized_image_scores(scores, uncond) -> np.ndarray:
    """Scores with each image's unconditional score removed: s_norm[..., c, i] = s[..., c, i] - u[..., i].

    With diffusion scores s = -err(c, i) and u[i] = -err("", i), this removes how easy an image is to
    denoise regardless of the caption. It changes the image score only: text comparisons are within
    one image, so a per-image shift cancels there.
    scores: (..., 2, 2) indexed [caption, image]; uncond: (..., 2) indexed [image].
    """
    s = _as_scores(scores)
    if hasattr(uncond, "detach"):
        uncond = uncond.detach().cpu().double().numpy()
    u = np.asarray(uncond, dtype=np.float64)
    if u.shape != s.shape[:-1]:
        raise ValueError(f"unconditional scores must have shape {s.shape[:-1]} (one per image), got {u.shape}")
    return s - u[..., None, :]  # broadcast over captions


def _json_default(obj):
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def save_json(path: str | os.PathLike, result) -> None:
    """Write `result` as JSON atomically: a temporary file in the same directory, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
