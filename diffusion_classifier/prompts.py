"""Prompt tables: one row per (prompt, class); the classifier predicts the classidx of the winning row."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import InputError, MissingError, warn

DATA_DIR = Path(__file__).parent / "data"
COLUMNS = ("prompt", "classname", "classidx")


@dataclass
class PromptTable:
    """Parallel lists: row i is prompt i, naming class classnames[i] with label classidx[i]."""

    prompts: list[str]
    classnames: list[str]
    classidx: list[int]

    def __len__(self) -> int:
        return len(self.prompts)

    def rows(self) -> list[tuple[str, str, int]]:
        """The table as (prompt, classname, classidx) tuples."""
        return list(zip(self.prompts, self.classnames, self.classidx))


@dataclass(frozen=True)
class PromptSpec:
    """How a dataset's prompts are built: every template filled with every class's prompt name."""

    templates: tuple[str, ...]
    classnames: tuple[str, ...]
    prompt_names: tuple[str, ...]

    def table(self) -> PromptTable:
        """Rows class by class (all templates of class 0, then class 1, ...), classidx = class position."""
        prompts, names, idx = [], [], []
        for i, (cname, pname) in enumerate(zip(self.classnames, self.prompt_names)):
            for template in self.templates:
                prompts.append(template.format(pname))
                names.append(cname)
                idx.append(i)
        return PromptTable(prompts, names, idx)


def _load_specs() -> dict[str, PromptSpec]:
    """Read the per-dataset templates and class lists shipped in the package."""
    raw = json.loads((DATA_DIR / "prompt_specs.json").read_text(encoding="utf-8"))
    meta = json.loads((DATA_DIR / "imagenet_meta.json").read_text(encoding="utf-8"))
    specs = {}
    for name, entry in raw.items():
        classnames = tuple(entry["classnames"])
        prompt_names = tuple(entry.get("prompt_names", classnames))
        assert len(prompt_names) == len(classnames), name
        specs[name] = PromptSpec(tuple(entry["templates"]), classnames, prompt_names)
    imagenet = specs["imagenet"]
    specs["imagenetv2"] = imagenet  # same 1000 classes, same label order
    specs["digits_c"] = specs["digits"]  # the corrupted digits test split: same classes
    # ImageNet-A: its 200 classes in sorted-wnid order, which is ImageNet-1k index order
    a_idx = meta["imagenet_a_indices"]
    specs["imagenetA"] = PromptSpec(
        imagenet.templates,
        tuple(imagenet.classnames[i] for i in a_idx),
        tuple(imagenet.prompt_names[i] for i in a_idx),
    )
    return specs


DATASET_PROMPTS: dict[str, PromptSpec] = _load_specs()


def dataset_prompts(dataset: str) -> PromptTable:
    """The prompt table of a known dataset (the rows scripts/write_prompts.py writes)."""
    if dataset not in DATASET_PROMPTS:
        raise InputError(f"no prompts known for dataset {dataset!r}; known: {', '.join(DATASET_PROMPTS)}")
    return DATASET_PROMPTS[dataset].table()


def read_prompts(path: str | Path) -> PromptTable:
    """Read a prompts CSV with columns prompt, classname, classidx (others ignored, any order)."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(
            f"prompts file not found: {path} (expected a CSV with columns prompt,classname,classidx; "
            f"scripts/write_prompts.py writes them)"
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Excel's "CSV UTF-8") is accepted
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                         f"expected a UTF-8 CSV prompt,classname,classidx: re-save it as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        raise InputError(f"{path}: empty file; expected a header prompt,classname,classidx and at least one row")
    found = list(reader.fieldnames)
    missing = [c for c in COLUMNS if c not in found]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)}; expected prompt,classname,classidx, "
            f"found {', '.join(found) if any(found) else '(none)'}"
        )
    prompts, names, idx, lines = [], [], [], []
    for row_num, row in enumerate(reader, start=1):
        if all(v is None or not str(v).strip() for v in row.values() if not isinstance(v, list)):
            continue  # a blank (or whitespace-only, or commas-only) line
        value = row["classidx"]
        text_idx = value.strip() if value is not None else ""
        if not (text_idx.isascii() and text_idx.isdigit()):
            raise InputError(
                f"{path}: data row {row_num} (line {reader.line_num}) has classidx {value!r}; "
                f"expected a non-negative integer"
            )
        prompts.append(row["prompt"] or "")
        names.append(row["classname"] or "")
        idx.append(int(text_idx))
        lines.append(reader.line_num)
    if not prompts:
        raise InputError(f"{path}: header found but no rows; expected at least one prompt row")
    first: dict[tuple[str, int], int] = {}
    dups = []
    for k, key in enumerate(zip(prompts, idx)):
        if key in first:
            dups.append((lines[first[key]], lines[k]))
        else:
            first[key] = k
    if dups:
        shown = ", ".join(f"line {b} repeats line {a}" for a, b in dups[:3]) + (", ..." if len(dups) > 3 else "")
        warn(f"{path}: {len(dups)} duplicate prompt row(s) ({shown}); each copy is scored as a separate candidate "
             f"(extra evaluations, and copies can take several --to_keep places)")
    return PromptTable(prompts, names, idx)


def check_classidx(table: PromptTable, n_classes: int, source: str = "") -> None:
    """Raise InputError unless every classidx of the table lies in 0..n_classes-1."""
    bad = [(i, c) for i, c in enumerate(table.classidx) if not 0 <= c < n_classes]
    if bad:
        where = f"{source}: " if source else ""
        row, value = bad[0]
        raise InputError(
            f"{where}classidx {value} (row {row + 1}) is out of range: the dataset has {n_classes} classes, "
            f"so classidx must be in 0..{n_classes - 1}; {len(bad)} row(s) are outside it"
        )


def write_prompts_csv(path: str | Path, rows: PromptTable | Iterable[Sequence]) -> None:
    """Write rows (prompt, classname, classidx) under the header prompt,classname,classidx, '\\n' line ends."""
    if isinstance(rows, PromptTable):
        rows = rows.rows()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")  # QUOTE_MINIMAL, like the reference files
        writer.writerow(COLUMNS)
        for prompt, classname, classidx in rows:
            writer.writerow((prompt, classname, int(classidx)))
