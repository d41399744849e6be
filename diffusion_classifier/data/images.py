"""Image files that cannot be read: found from their headers before a run, or met while it runs.

A dataset whose image list is known up front (folders of files, Hugging Face rows) is checked by
opening each image's header (PNG files also have their chunk checksums read), not by decoding its
pixels. A file that passes that check and still fails to decode is met by `load_items` while the run
goes on. Either way the caller stops with one line naming the file and what was found, or skips it.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError

SKIP_HINT = "or pass --skip_unreadable to leave such images out (they are listed in the final line and the manifest)"


class UnreadableImageError(InputError):
    """An image file or row that cannot be decoded: `name` says which, `found` what it holds."""

    def __init__(self, name: str, found: str, message: str | None = None):
        self.name, self.found = name, found
        super().__init__(message or f"unreadable image {name}: {found}")


@dataclass(frozen=True)
class Unreadable:
    """One image left out: its dataset index (or Winoground example id), its name and what was found."""

    index: int
    name: str
    found: str

    def line(self) -> str:
        return f"{self.name}: {self.found}"


def _raised_in_pil(e: BaseException) -> bool:
    """True if the innermost frame of e's traceback is PIL's (a decoding failure, not a bug of ours)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("PIL")


def describe_failure(e: BaseException, head: bytes | None = None, fmt: str | None = None) -> str:
    """What a file that PIL refused holds, in a few words; `head` is its first bytes when known."""
    if isinstance(e, FileNotFoundError):
        return "the file does not exist (its path is listed, but no file is there)"
    if isinstance(e, IsADirectoryError):
        return "a folder, not an image file"
    if isinstance(e, PermissionError):
        return "a file this process may not read (permission denied)"
    if head is not None and len(head) == 0:
        return "an empty file (0 bytes)"
    if isinstance(e, Image.UnidentifiedImageError):
        start = f" (it starts with {head[:16]!r})" if head else ""
        return f"not an image format PIL can read{start}"
    if isinstance(e, Image.DecompressionBombError):
        return f"an image above PIL's pixel limit ({e})"
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    kind = f"{fmt} " if fmt else ""
    if "truncat" in text.lower():
        return f"a truncated {kind}file ({text})"
    return f"a damaged {kind}file ({type(e).__name__}: {text})"


def _head(source: str | os.PathLike | bytes, n: int = 16) -> bytes | None:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:n])
    try:
        with open(source, "rb") as f:
            return f.read(n)
    except OSError:
        return None


def _open(source: str | os.PathLike | bytes):
    return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)


def header_problem(source: str | os.PathLike | bytes) -> str | None:
    """None if the image's header reads (and a PNG's chunks check out), else what was found instead."""
    fmt = None
    try:
        with _open(source) as im:
            fmt = im.format
            im.verify()  # PNG: every chunk's CRC up to IEND; other formats: the header only
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error ...
        return describe_failure(e, _head(source), fmt)
    return None


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float greyscale image as 8-bit greyscale (mode L); any other image unchanged. PIL's own
    convert clips such values at 255 (most 16-bit images would turn white) and rounds floats in [0, 1] to 0 or 1, and
    its resize does not take every such mode. 16-bit values (mode I;16*, or mode I from a PNG or with values above
    255) are scaled by 255/65535, floats (mode F) in [0, 1] by 255, anything else is clipped to [0, 255]."""
    mode = img.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return img
    a = np.asarray(img, dtype=np.float64)
    if mode.startswith("I;16") or (mode == "I" and (img.format == "PNG" or (a.size and a.max() > 255))):
        a = a * (255.0 / 65535.0)
    elif mode == "F" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
        a = a * 255.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB image of a PIL image of any mode (to_8bit first, then PIL's convert)."""
    img = to_8bit(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_rgb(source: str | os.PathLike | bytes, name: str | None = None, upright: bool = False) -> Image.Image:
    """The image as a loaded RGB PIL image; UnreadableImageError naming it when it cannot be decoded. `upright`: turned
    as its EXIF orientation says (a camera's photo stored sideways), as viewers show it."""
    fmt = None
    try:
        with _open(source) as im:
            fmt = im.format
            out = to_rgb(ImageOps.exif_transpose(im) if upright else im)
            return out.copy() if out is im else out  # not the file's own image, which the with-block closes
    except Exception as e:  # noqa: BLE001 - see header_problem
        if not (isinstance(e, OSError) or _raised_in_pil(e)):
            raise  # not a decoding failure: a bug keeps its traceback
        raise UnreadableImageError(name or str(source), describe_failure(e, _head(source), fmt)) from None


def open_rgb(path: str) -> Image.Image:
    """Loader for folder datasets (torchvision's ImageFolder `loader=`): decode_rgb of a file path."""
    return decode_rgb(path, str(path))


def open_upright_rgb(path: str) -> Image.Image:
    """Loader for a user's image folder: decode_rgb of a file path, turned upright by its EXIF orientation."""
    return decode_rgb(path, str(path), upright=True)


class LateTransform:
    """A transform set after the dataset is built: the images are checked before the model (and its size) is loaded."""

    def __init__(self, transform: Callable | None = None):
        self.transform = transform

    def __call__(self, img):
        if self.transform is None:
            raise RuntimeError("LateTransform used before its transform was set")
        return self.transform(img)


# ---------------------------------------------------------------- where a dataset's images are


def image_locator(dataset) -> Callable[[int], tuple[str, Callable[[], str | bytes]]] | None:
    """For a dataset whose images can be located without decoding: i -> (name, read the file path or bytes).

    Covers our Hugging Face datasets (`image_source`), torchvision folder datasets (`samples`) and the
    torchvision datasets that keep their file list; None for in-memory sets (nothing to check).
    """
    if hasattr(dataset, "image_source"):
        return dataset.image_source
    if hasattr(dataset, "dataset") and hasattr(dataset, "mapping"):  # datasets.RemappedLabels
        return image_locator(dataset.dataset)
    files = None
    if isinstance(getattr(dataset, "samples", None), list):
        files = [s[0] for s in dataset.samples]
    else:  # torchvision datasets that keep their file list (Food101, Flowers102, FGVCAircraft, OxfordIIITPet)
        for attr in ("_image_files", "_images"):
            if isinstance(getattr(dataset, attr, None), list):
                files = list(getattr(dataset, attr))
                break
        if files is None and hasattr(dataset, "categories") and hasattr(dataset, "index") and hasattr(dataset, "y"):
            root = Path(dataset.root) / "101_ObjectCategories"  # torchvision's Caltech101 layout
            files = [root / dataset.categories[y] / f"image_{k:04d}.jpg" for y, k in zip(dataset.y, dataset.index)]
    if files is None or len(files) != len(dataset):
        return None
    return lambda i: (str(files[i]), lambda: str(files[i]))


def image_name(dataset, i: int) -> str:
    """The file (or row) behind dataset[i], for messages."""
    locate = image_locator(dataset)
    return locate(i)[0] if locate is not None else f"image {i}"


def find_unreadable(dataset, indices: Sequence[int], show_progress: bool = False) -> list[Unreadable]:
    """The images among dataset[indices] whose header cannot be read ([] if their files are not known)."""
    locate = image_locator(dataset)
    if locate is None:
        return []
    from tqdm.auto import tqdm

    bad = []
    for i in tqdm(indices, desc="checking images", disable=not show_progress or len(indices) < 1000, leave=False):
        name, read = locate(i)
        try:
            source = read()
        except UnreadableImageError as e:
            bad.append(Unreadable(int(i), e.name, e.found))
            continue
        problem = header_problem(source)
        if problem is not None:
            bad.append(Unreadable(int(i), name, problem))
    return bad


def unreadable_files(entries) -> list[Unreadable]:
    """Image files whose header cannot be read (a missing file included), from (index, path) pairs: one entry per
    file, at the first index that names it; checked before a model loads."""
    seen, bad = set(), []
    for n, path in entries:
        if path not in seen:
            seen.add(path)
            problem = header_problem(path)
            if problem:
                bad.append(Unreadable(n, path, problem))
    return bad


def drop_unreadable(dataset, indices: Sequence[int], skip_unreadable: bool,
                    show_progress: bool = False) -> tuple[list[int], list[Unreadable]]:
    """(indices without the images whose header cannot be read, those images); InputError on them unless skipping."""
    bad = find_unreadable(dataset, indices, show_progress)
    if bad and not skip_unreadable:
        raise UnreadableImageError(bad[0].name, bad[0].found, found_before_message(bad, len(indices)))
    left_out = {b.index for b in bad}
    return [i for i in indices if i not in left_out], bad


def load_items(dataset, indices: Sequence[int]) -> tuple[list, list[tuple[int, Unreadable]]]:
    """([(i, dataset[i])] for the readable i, [(i, Unreadable)] for the others): decoding failures are collected, not raised."""
    items, bad = [], []
    for i in indices:
        try:
            items.append((i, dataset[i]))
        except UnreadableImageError as e:
            bad.append((i, Unreadable(int(i), e.name, e.found)))
        except Exception as e:  # noqa: BLE001 - torchvision datasets decode with PIL themselves
            if not _raised_in_pil(e):
                raise
            bad.append((i, Unreadable(int(i), image_name(dataset, i), describe_failure(e))))
    return items, bad


# ---------------------------------------------------------------- messages


def names_of(bad: Sequence[Unreadable], limit: int = 5) -> str:
    """'a.png, b.png, ... (12 in all)': the first few names of a list of unreadable images."""
    shown = ", ".join(b.name for b in bad[:limit])
    return shown + (f", ... ({len(bad)} in all)" if len(bad) > limit else "")


def found_before_message(bad: Sequence[Unreadable], n_checked: int, unit: str = "images") -> str:
    """The one-line error for unreadable images found by their headers, before anything was computed."""
    first = bad[0]
    more = f"; {len(bad) - 1} more of the {n_checked} {unit} to score cannot be read either: {names_of(bad[1:])}" \
        if len(bad) > 1 else ""
    return (f"unreadable image {first.line()}{more}; nothing was computed: replace or remove the file(s), "
            f"{SKIP_HINT}")


def met_message(bad: Unreadable, finished: int, unit: str = "images") -> str:
    """The one-line error for an image that failed to decode during a run: every finished record is kept."""
    return (f"unreadable image {bad.line()}; the {finished} {unit} finished in this run are saved: replace or "
            f"remove the file and re-run the same command to resume, {SKIP_HINT}")
