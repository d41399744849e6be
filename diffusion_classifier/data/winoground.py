"""Winoground (Thrush et al., 2022) as distributed: examples.jsonl plus images/ or images.zip, read and written."""
from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import InputError, MissingError
from .entries import int_field, json_lines, short
from .images import Unreadable, UnreadableImageError, decode_rgb, header_problem

HUB_URL = "https://huggingface.co/datasets/facebook/winoground"
EXAMPLE_KEYS = (
    "id", "caption_0", "caption_1", "tag", "secondary_tag", "num_main_preds", "collapsed_tag",
    "image_0", "image_1",
)
def how_to_obtain(data_dir: str | os.PathLike) -> str:
    """The sentence on getting the gated data into `data_dir`, as the loader's errors say it."""
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
            raise MissingError(f"no Winoground images: expected a folder {self.folder} or a zip "
                                    f"{self.zip_path}; {how_to_obtain(self.data_dir)}")

    def _open_zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.zip_path)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise InputError(f"{self.zip_path} is not a readable zip archive ({type(e).__name__}: {e}); it may be "
                                 f"cut short: download images.zip again, or unpack the images into "
                                 f"{self.data_dir / 'images'}/") from None
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
                raise MissingError(f"Winoground image {name!r} not found: expected file {path}")
            return str(path)
        self._open_zip()
        if name not in self._members:
            raise MissingError(f"Winoground image {name!r} not found: expected member "
                                    f"images/{name}.png or {name}.png in {self.zip_path}")
        return f"{self.zip_path}:{self._members[name]}"

    def __contains__(self, name: str) -> bool:
        try:
            self.source(name)
        except FileNotFoundError:
            return False
        return True

    def read(self, name: str) -> str | bytes:
        """Image `name` as a file path (folder) or its encoded bytes (zip), without decoding it."""
        self.source(name)  # raises a clear FileNotFoundError if it is absent
        if self.folder is not None:
            return str(self.folder / f"{name}.png")
        try:
            return self._open_zip().read(self._members[name])
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a damaged member: the others may be fine
            raise UnreadableImageError(self.source(name), f"a damaged zip member ({type(e).__name__}: {e})") from None

    def open(self, name: str) -> Image.Image:
        """The image `name` as a loaded PIL RGB image; UnreadableImageError naming it if it cannot be decoded."""
        return decode_rgb(self.read(name), self.source(name))

    def unreadable(self, name: str) -> str | None:
        """What image `name` holds if its header cannot be read (see images.header_problem), else None."""
        try:
            return header_problem(self.read(name))
        except UnreadableImageError as e:  # a damaged zip member
            return e.found

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
            raise InputError(f"caption index must be 0 or 1, got {k!r}")
        return self.caption_1 if k else self.caption_0

    def image_name(self, k: int) -> str:
        """Name of image k (0 or 1)."""
        if k not in (0, 1):
            raise InputError(f"image index must be 0 or 1, got {k!r}")
        return self.image_1 if k else self.image_0

    def open_image(self, k: int) -> Image.Image:
        """Image k (0 or 1) as a PIL RGB image."""
        name = self.image_name(k)
        if self.images is None:
            raise InputError(f"example {self.id} has no image reader; expected one from load_winoground, found None")
        return self.images.open(name)


def load_winoground(data_dir: str | os.PathLike, limit: int | None = None) -> list[WinogroundExample]:
    """The examples of a local Winoground copy (examples.jsonl plus images/ or images.zip), in file order."""
    data_dir = Path(data_dir)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive int or None, got {limit!r}")
    if not data_dir.is_dir():
        raise MissingError(f"Winoground data directory {data_dir} does not exist; {how_to_obtain(data_dir)}")
    jsonl = data_dir / "examples.jsonl"
    if not jsonl.is_file():
        raise MissingError(f"Winoground metadata {jsonl} not found; {how_to_obtain(data_dir)}")
    images = WinogroundImages(data_dir)

    examples = []
    lines = {}  # id -> its line
    for lineno, record in json_lines(jsonl, "one Winoground example a line", objects=True):
        missing = [k for k in EXAMPLE_KEYS if k not in record]
        if missing:
            raise InputError(f"{jsonl} line {lineno}: missing keys {', '.join(missing)}")
        where = f"{jsonl} line {lineno}"
        record = {**record, "id": int_field(record, "id", where)}  # records and results are keyed by the integer id
        for key in ("caption_0", "caption_1", "image_0", "image_1"):
            if not isinstance(record[key], str):
                raise InputError(f"{where}: {key} must be a string, found {short(record[key])}")
        if record["id"] in lines:
            raise InputError(f"{where}: id {record['id']} repeats (first on line {lines[record['id']]}); expected one "
                             f"id per example")
        lines[record["id"]] = lineno
        ex = WinogroundExample(**{k: record[k] for k in EXAMPLE_KEYS}, images=images)
        for k in (0, 1):
            images.source(ex.image_name(k))  # fail now, not hours into an evaluation
        examples.append(ex)
        if limit is not None and len(examples) == limit:
            break
    return examples


def find_unreadable_examples(examples: list[WinogroundExample]) -> list[Unreadable]:
    """The examples with an image whose header cannot be read, one entry per example (index = example id)."""
    bad = []
    for ex in examples:
        for k in (0, 1):
            name = ex.image_name(k)
            found = ex.images.unreadable(name) if ex.images is not None else None
            if found is not None:
                bad.append(Unreadable(int(ex.id), ex.images.source(name), found))
                break
    return bad


# ---------------------------------------------------------------- writing a local copy


def write_winoground(data_dir: str | os.PathLike, records: list[dict], images: dict[str, Image.Image],
                     zip_images: bool = False) -> Path:
    """Write a copy that load_winoground reads: examples.jsonl plus images/<name>.png (or images.zip)."""
    data_dir = Path(data_dir)
    for i, record in enumerate(records):
        missing = [k for k in EXAMPLE_KEYS if k not in record]
        if missing:
            raise InputError(f"example {i} lacks keys {', '.join(missing)}; expected all of {', '.join(EXAMPLE_KEYS)}")
        absent = [record[k] for k in ("image_0", "image_1") if record[k] not in images]
        if absent:
            raise InputError(f"example {i} names images {', '.join(absent)} that are not among the images given")
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "examples.jsonl", "w", encoding="utf-8") as f:
        # the loader's keys first; extra keys (provenance) are kept and ignored by load_winoground
        f.writelines(json.dumps({**{k: record[k] for k in EXAMPLE_KEYS}, **record}) + "\n" for record in records)
    if zip_images:
        with zipfile.ZipFile(data_dir / "images.zip", "w") as z:
            for name, im in images.items():
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                z.writestr(f"images/{name}.png", buf.getvalue())  # the hub zip's layout
    else:
        (data_dir / "images").mkdir(exist_ok=True)
        for name, im in images.items():
            im.save(data_dir / "images" / f"{name}.png")
    return data_dir


