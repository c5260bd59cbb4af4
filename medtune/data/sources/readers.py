"""Reading raw files so that every row keeps its file and line, and bad bytes surface per field.

Files are decoded as UTF-8 with `surrogateescape`: a byte that is not UTF-8 becomes a lone surrogate in the one
field that holds it, and `schema.text_field` reports that field and line instead of failing the whole file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtune.data.schema import RowSink


def read_text(path: Path) -> str:
    """The file's text (UTF-8, BOM stripped); undecodable bytes kept as lone surrogates."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; set data.data_dir (or MEDTUNE_DATA_DIR) to the folder laid out as in "
            "../shared/data/README.md, or set data.hub=true to load from the Hugging Face hub."
        )
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    return text.removeprefix("\ufeff")


def iter_csv(path: Path, header: bool = True, delimiter: str = ",") -> Iterator[tuple[int, dict[str, Any] | list[str]]]:
    """(first line of the row, row) for each CSV row; dict rows when the file has a header."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    columns: list[str] | None = None
    line = 1
    for cells in reader:
        start, line = line, reader.line_num + 1  # quoted fields may span lines: report where the row starts
        if not cells:
            continue
        if header and columns is None:
            columns = cells
            continue
        if columns is None:
            yield start, cells
        else:
            yield start, dict(zip(columns, cells, strict=False))


def iter_jsonl(path: Path, sink: RowSink) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty JSON Lines row; a line that is not a JSON object is a bad row."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            sink.bad(f"{path}:{number}", "<line>", f"not valid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(row, dict):
            sink.bad(f"{path}:{number}", "<line>", f"a JSON {type(row).__name__}, expected an object")
            continue
        yield number, row


def read_json(path: Path) -> Any:
    """A whole JSON document; a parse error names the file, line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno}).") from None
