"""Prompt tables: one row per (prompt, class); the classifier predicts the classidx of the winning row."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError, MissingError, warn

DATA_DIR = Path(__file__).parent  # the package data files live beside the readers
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
    specs["imagenet_sketch"] = imagenet  # sketches of all 1000 classes, labelled by ImageNet-1k index
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


def classes_table(spec: PromptSpec, class_ids) -> PromptTable:
    """The rows of `spec` for the given classes only (e.g. ImageNet-R's wnid folders), classidx kept as in spec."""
    prompts, names, idx = [], [], []
    for c in sorted(set(int(c) for c in class_ids)):
        for template in spec.templates:
            prompts.append(template.format(spec.prompt_names[c]))
            names.append(spec.classnames[c])
            idx.append(c)
    return PromptTable(prompts, names, idx)


def named_classes_table(classnames, templates=("a photo of a {}.",)) -> PromptTable:
    """Rows for classes known only by name (a Hugging Face ClassLabel, folder names): underscores become spaces."""
    classnames = tuple(str(c) for c in classnames)
    if not classnames:
        raise InputError("no class names to write prompts for")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise InputError(f"a prompt template must hold one {{}} where the class name goes, got {bad[0]!r}")
    return PromptSpec(tuple(templates), classnames, tuple(c.replace("_", " ") for c in classnames)).table()


def dataset_prompts(dataset: str) -> PromptTable:
    """The prompt table of a known dataset (the rows scripts/write_prompts.py writes)."""
    if dataset not in DATASET_PROMPTS:
        raise InputError(f"no prompts known for dataset {dataset!r}; known: {', '.join(DATASET_PROMPTS)}")
    return DATASET_PROMPTS[dataset].table()


def _rows(reader: csv.DictReader, path: Path):
    """The reader's rows; InputError naming the line where the CSV's quoting breaks."""
    try:
        yield from reader
    except csv.Error as e:
        raise InputError(f"{path} line {reader.line_num + 1}: {e} (a quoted field must end with a closing quote, then a "
                         f"comma or the line's end; a quote inside a quoted field is written \"\"); expected a CSV "
                         f"prompt,classname,classidx") from None


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
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)  # strict: a quote left open is an error
    if reader.fieldnames is None:
        raise InputError(f"{path}: empty file; expected a header prompt,classname,classidx and at least one row")
    found = list(reader.fieldnames)
    # "Prompt, ClassName, classidx" (spaces after the commas, capitals) names the same columns
    reader.fieldnames = [f.strip().lower() if f and f.strip().lower() in COLUMNS else f for f in found]
    missing = [c for c in COLUMNS if c not in reader.fieldnames]
    twice = [c for c in COLUMNS if reader.fieldnames.count(c) > 1]
    if twice:  # csv reads the last of them: which one the file means is not known
        raise InputError(f"{path}: column {twice[0]} appears {reader.fieldnames.count(twice[0])} times in the header "
                         f"({', '.join(found)}); expected each of prompt,classname,classidx once")
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)}; expected prompt,classname,classidx, "
            f"found {', '.join(found) if any(found) else '(none)'}"
        )
    prompts, names, idx, lines = [], [], [], []
    for row_num, row in enumerate(_rows(reader, path), start=1):
        if all(v is None or not str(v).strip() for v in row.values() if not isinstance(v, list)):
            continue  # a blank (or whitespace-only, or commas-only) line
        value = row["classidx"]
        text_idx = value.strip() if value is not None else ""
        whole, dot, frac = text_idx.partition(".")  # "3.0": a float column written by pandas
        if dot and frac.strip("0") == "" and whole:
            text_idx = whole
        if not (text_idx.isascii() and text_idx.isdigit()):
            raise InputError(
                f"{path}: data row {row_num} (line {reader.line_num}) has classidx {value!r}; "
                f"expected a non-negative integer"
            )
        if not (row["prompt"] or "").strip():
            warn(f"{path}: data row {row_num} (line {reader.line_num}) has an empty prompt (classidx {int(text_idx)}): "
                 f"class {row['classname'] or int(text_idx)!r} is scored by the unconditional (empty) prompt")
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


def _norm_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def check_coverage(table: PromptTable, labels: Iterable[int], class_names: Sequence[str] = (), source: str = "") -> None:
    """Raise InputError unless every label in `labels` (those of the images to classify) has a prompt row.

    An image whose class has no row can never be predicted right, so the accuracy would be silently capped.
    With `class_names` (label order) the message names the classes, and lists the rows whose classname is
    a missing class's name but whose classidx is another: a swapped or shifted classidx.
    """
    counts: dict[int, int] = {}
    for label in labels:
        counts[int(label)] = counts.get(int(label), 0) + 1
    have = set(table.classidx)
    missing = sorted(c for c in counts if c not in have)
    if not missing:
        return
    where = f"{source}: " if source else ""
    name = (lambda c: class_names[c] if 0 <= c < len(class_names) else None)  # noqa: E731
    shown = ", ".join(f"{c} ({name(c) + ': ' if name(c) else ''}{counts[c]} image{'s' * (counts[c] != 1)})"
                      for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
    by_name = {_norm_name(name(c)): c for c in missing if name(c)}
    own = (lambda c: _norm_name(name(c)) if name(c) else None)  # noqa: E731
    swapped = [(row, c, by_name[_norm_name(n)]) for row, (n, c) in enumerate(zip(table.classnames, table.classidx), 1)
               if _norm_name(n) in by_name and _norm_name(n) != own(c)]  # ImageNet has two "missile" classes
    hint = ""
    if swapped:
        rows = ", ".join(f"data row {row} ({table.classnames[row - 1]!r}) has classidx {c}, not {want}"
                         for row, c, want in swapped[:5]) + (", ..." if len(swapped) > 5 else "")
        hint = f"; swapped classidx? {rows}"
    raise InputError(
        f"{where}no prompt row for {len(missing)} class{'es' * (len(missing) != 1)} of the images to classify: "
        f"{shown}{hint}; such images would be scored against prompts that cannot win: add at least one row per "
        f"class (prompt,classname,classidx)"
    )


def check_names(table: PromptTable, class_names: Sequence[str], source: str = "") -> None:
    """Warn when a row's classname is the name of another class of the dataset (`class_names`, label order): a CSV
    written for another class order scores each image as another class's (a deliberate relabelling is allowed). Names that several
    classes share (ImageNet's two "crane"s) and names the dataset does not use are not checked."""
    index: dict[str, int | None] = {}
    for c, n in enumerate(class_names):
        key = _norm_name(n)
        index[key] = None if key in index else c  # a shared name points at no one class
    named = [(row, n, c, index.get(_norm_name(n)) if n else None)
             for row, (n, c) in enumerate(zip(table.classnames, table.classidx), 1)]
    wrong = [(row, n, c, want) for row, n, c, want in named if want is not None and want != c]
    if wrong:
        rows = ", ".join(f"data row {row} names {n!r} with classidx {c}, but {n!r} is class {want}"
                         for row, n, c, want in wrong[:3]) + (", ..." if len(wrong) > 3 else "")
        warn(f"{source + ': ' if source else ''}{rows} of the dataset (its classes in label order: "
             f"{', '.join(map(str, class_names[:5]))}{', ...' if len(class_names) > 5 else ''}); each row's classidx "
             f"is the label it scores: if the file was written for another class order, fix its classidx column or "
             f"write it with scripts/write_prompts.py")


def write_prompts_csv(path: str | Path, rows: PromptTable | Iterable[Sequence]) -> None:
    """Write rows (prompt, classname, classidx) under the header prompt,classname,classidx, '\\n' line ends."""
    from ..records import atomic_write_bytes

    if isinstance(rows, PromptTable):
        rows = rows.rows()
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")  # QUOTE_MINIMAL, like the reference files
    writer.writerow(COLUMNS)
    for prompt, classname, classidx in rows:
        writer.writerow((prompt, classname, int(classidx)))
    data = text.getvalue().encode("utf-8")
    atomic_write_bytes(path, lambda f: f.write(data), flag="--out")  # an existing CSV stays whole if the write fails
