"""Files a crash cannot tear: atomic replace for whole files, one fsynced write per JSON line, strict JSON.

- `atomic_write_text`: write a temporary file next to the target, fsync, `os.replace` (readers see the
  old or the new file, never half of one), fsync the folder.
- `append_json_line`: one `write` of a whole line, flushed and fsynced; a crash can leave at most a torn
  last line, which `read_json_lines` reports so resume can drop it.
- `strict_json`: JSON as the standard defines it: non-finite floats become null (Python's `json` would
  write bare `NaN`/`Infinity`, which other readers reject); numpy scalars and arrays become numbers and lists.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path


def sanitize(value):
    """`value` with non-finite floats replaced by None, numpy scalars/arrays as Python numbers/lists, tuples as
    lists."""
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array, 0-d tensor
        return sanitize(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(value) -> str:
    """One line of standard JSON (no NaN/Infinity tokens)."""
    return json.dumps(sanitize(value), allow_nan=False)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in folder `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_json_line(path: Path, row: dict) -> None:
    """Append `row` as one strict-JSON line in a single write, flushed to disk before returning."""
    line = (strict_json(row) + "\n").encode()
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class TornFileError(ValueError):
    """A JSON-lines file has a line that is not JSON before its last line: not a crash's torn tail."""


@dataclass
class JsonLines:
    """The rows of a JSON-lines file; `torn` holds a last line a crash cut short (not JSON), else None."""

    rows: list[dict]
    torn: str | None = None


def read_json_lines(path: Path) -> JsonLines:
    """Parse a JSON-lines file. A last line that does not parse (or lacks its newline and does not parse) is a torn
    tail and is returned in `torn`; a bad line anywhere else raises TornFileError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return JsonLines([])
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as error:
            if number == len(lines):
                return JsonLines(rows, line)
            raise TornFileError(
                f"{path} line {number} is not a JSON object ({error}); fix or remove that line"
            ) from None
        rows.append(row)
    return JsonLines(rows)


def write_json_lines(path: Path, rows: list[dict]) -> None:
    """Replace a JSON-lines file atomically with `rows`."""
    atomic_write_text(path, "".join(strict_json(r) + "\n" for r in rows))
