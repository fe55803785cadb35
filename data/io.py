"""Reading published files with errors that name the file, the line and the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmark.types import DataError

# Limits no published record comes near (the real samples' longest line is 17.5k characters, their
# longest string 3.5k): past them a file is refused by name before it costs minutes or gigabytes.
MAX_LINE = 4 * 2**20  # characters of one JSONL line
MAX_TEXT = 100_000  # characters of one text field (a prompt, an answer, an evidence sentence)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; this setting takes a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    return path


def _text(path: Path) -> str:
    """The file as UTF-8 text; a byte that is not UTF-8 is named by its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[err.start]:#04x}); save the file as UTF-8") from None


def read_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Records of a JSON array or JSONL file, told apart by their first character, not the name."""
    path = _existing(path)
    head = _text(path).lstrip()[:1]
    return read_json_array(path) if head == "[" else read_jsonl(path)


def _loads(text: str, path: Path, first_line: int = 1) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = first_line + err.lineno - 1
        raise DataError(f"{path}:{line}: malformed JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:  # the parser recurses once per level: a hostile file nests past the stack
        raise DataError(f"{path}:{first_line}: JSON nested too deeply to read (no record nests like this)") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield (where, record) with `where` = "FILE:LINE"; blank lines are skipped."""
    path = _existing(path)
    for number, line in enumerate(_text(path).split("\n"), 1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        if len(line) > MAX_LINE:
            raise DataError(f"{path}:{number}: a line of {len(line):,} characters, past the {MAX_LINE:,} any record "
                            "needs; refused unread")
        record = _loads(line, path, number)
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield f"{path}:{number}", _bounded(record, f"{path}:{number}")


def read_json_array(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield (where, record) from a JSON array file; `where` = "FILE:LINE (record N)"."""
    path = _existing(path)
    text = _text(path)
    records = _loads(text, path)
    if not isinstance(records, list):
        raise DataError(f"{path}:1: expected a JSON array of records")
    # Line of each record's opening brace, so errors point into the file.
    starts = _object_lines(text)
    for i, record in enumerate(records):
        line = starts[i] if i < len(starts) else 1
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line}: record {i} is not a JSON object")
        where = f"{path}:{line} (record {i})"
        yield where, _bounded(record, where)


def _object_lines(text: str) -> list[int]:
    """Line numbers of the top-level objects of a JSON array (string-aware brace scan)."""
    lines, depth, line, in_string, escape = [], 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_string:  # a backslash escapes the next character, itself included
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            if ch == "{" and depth == 2:
                lines.append(line)
        elif ch in "}]":
            depth -= 1
    return lines


def field(record: dict, path: str, where: str, kind: type | tuple = object) -> Any:
    """record at a dotted path ("output.0.answer"); a missing or mistyped field is a DataError."""
    value: Any = record
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise DataError(f"{where}: missing field '{path}'")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field '{path}' should be {names}, got {type(value).__name__}")
    return value


def _bounded(record: dict, where: str) -> dict:
    """The record, where none of its strings, at any depth, is longer than MAX_TEXT (walked without
    recursion: the depth is the file's to choose)."""
    todo: list[Any] = [record]
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise DataError(f"{where}: a text of {len(value):,} characters, past the {MAX_TEXT:,} a record's "
                                "text may have; refused before it is tokenized")
        elif isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return record


def strings(value: Any, path: str, where: str) -> list[str]:
    """`value`, the field at `path`, as a list of strings; anything else is a DataError."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: field '{path}' should be a list of strings")
    return value


def kilt_answers(record: dict, where: str) -> list[str]:
    """The answers in a KILT record's `output`, in order: "each element might contain an answer, a
    provenance or both" (KILT's README), so provenance-only elements are skipped (the real NQ files
    have them). An element that is a string is an answer itself (T-Patcher's own zsRE files)."""
    answers = []
    for n, element in enumerate(field(record, "output", where, list)):
        if isinstance(element, str):
            answers.append(element)
        elif not isinstance(element, dict):
            raise DataError(f"{where}: field 'output.{n}' should be dict/str, got {type(element).__name__}")
        elif "answer" in element:
            answers.append(field(element, "answer", where, str))
    return answers


def find_file(folder: str | Path | None, patterns: list[str], what: str) -> Path | None:
    """First file in `folder` matching one of `patterns` (glob), or None."""
    if folder is None:
        raise DataError(f"{what}: set data.path to the folder of its files")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder ({what} needs data.path=DIR)")
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None
