"""Entries of the JSON and jsonl files datasets are distributed in, read with one-line errors that name the file."""
from __future__ import annotations

import codecs
import io
import json
from pathlib import Path

from ..errors import InputError, MissingError


def short(value, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def field(obj, key: str, where: str, kind=None):
    """obj[key]; InputError naming `where` when obj is no dict, lacks the key, or its value is not of `kind`."""
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(f"{where}: missing field {key!r}; expected it in every entry")
    value = obj[key]
    if kind is not None and not isinstance(value, kind):
        raise InputError(f"{where}: field {key!r} must be a {getattr(kind, '__name__', kind)}, found {short(value)}")
    return value


def int_field(obj, key: str, where: str) -> int:
    """obj[key] as an int (an integer, or a string or whole float holding one, as ids are often written); InputError
    naming `where` otherwise."""
    value = field(obj, key, where)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InputError(f"{where}: field {key!r} must be an integer, found {short(value)}")


def load_json(path: Path, expected: str):
    """The JSON document at `path`; MissingError or InputError saying what was `expected`."""
    if not path.is_file():
        raise MissingError(f"{path} does not exist; expected {expected}")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); expected {expected}") from None


def text_lines(path: Path, expected: str):
    """(line number, line) of each line of a UTF-8 text file; InputError naming the line whose bytes are not UTF-8."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(codecs.BOM_UTF8) else 0)
        n = data[:start].count(b"\n") + 1
        raise InputError(f"{path} line {n} is not UTF-8 text (byte {data[start:start + 1]!r}); expected {expected} "
                         f"in UTF-8") from None
    yield from enumerate(io.StringIO(text, newline=None), 1)


def json_lines(path: Path, expected: str, objects: bool = False):
    """(line number, value) of each non-empty line of a jsonl file; InputError naming the line that is not JSON.

    With `objects` every line must hold a JSON object ("line N: expected a JSON object, found invalid JSON (...)"
    or "found list"); without it any JSON value is yielded ("line N is not valid JSON (...); expected ...").
    """
    if not path.is_file():
        raise MissingError(f"{path} does not exist; expected {expected}")
    for n, line in text_lines(path, expected):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as e:
            if objects:
                raise InputError(f"{path} line {n}: expected a JSON object, found invalid JSON "
                                 f"({getattr(e, 'msg', e)})") from None
            raise InputError(f"{path} line {n} is not valid JSON ({e}); expected {expected}") from None
        if objects and not isinstance(value, dict):
            raise InputError(f"{path} line {n}: expected a JSON object, found {type(value).__name__}")
        yield n, value
