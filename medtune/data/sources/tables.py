"""Reading the files of a data.datasets entry: JSON Lines, JSON, CSV/TSV, Parquet, a save_to_disk folder, the hub.

    columns, rows = read_table(path, "jsonl", sink)      # rows: [(location, row dict)], location "file:line"
    splits = read_dataset_dict(path_or_id, hub=False)    # {split: (columns, rows)} of a saved or hub dataset

Every row keeps a location the user can open: `file:line` for text files (JSON arrays included: the line where
the item starts), `file row N` for Parquet and saved datasets, `hub <id> [split] row N`. Text files go through
`readers.read_text`, so bytes that are not UTF-8 surface in the one field (and line) that holds them.
"""

from __future__ import annotations

import json
import os
import stat
from importlib import resources
from pathlib import Path
from typing import Any

from medtune.data.schema import RowSink
from medtune.data.sources.readers import iter_csv, iter_jsonl, read_text

EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
EXTENSIONS |= {".parquet": "parquet", ".pq": "parquet"}
Rows = list[tuple[str, dict[str, Any]]]
PACKAGE_PREFIX = "medtune://"  # a path inside the installed package (the shipped examples)


class DatasetError(ValueError):
    """A declared dataset that cannot be read as declared (file, format, columns, splits); the message says the fix."""


def resolve_path(value: str, data_dir: Path) -> Path:
    """A declared path: `medtune://...` inside the package, absolute as is, else under data.data_dir."""
    if value.startswith(PACKAGE_PREFIX):
        return Path(str(resources.files("medtune"))) / value[len(PACKAGE_PREFIX) :]
    path = Path(value).expanduser()
    return path if path.is_absolute() else data_dir / path


def glob_path(pattern: Path) -> list[Path]:
    """The files a glob matches (sorted), or [pattern] when it is a path that exists."""
    if any(ch in str(pattern) for ch in "*?["):
        anchor = Path(pattern.anchor)
        return sorted(p for p in anchor.glob(str(pattern.relative_to(anchor))) if p.is_file())
    return [pattern] if pattern.exists() else []


def check_readable(path: Path, key: str) -> None:
    """A declared file that is a device, a pipe or a socket (endless or one-shot), or that cannot be read: stop."""
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = "a character device" if stat.S_ISCHR(mode) else "a pipe" if stat.S_ISFIFO(mode) else "not a plain file"
        raise DatasetError(f"{key}: {path} is {kind}, not a data file; point {key} at a file, a glob or a folder.")
    if not os.access(path, os.R_OK):
        raise DatasetError(f"{key}: {path} cannot be read (permission denied); make it readable or copy it.")


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by `datasets` save_to_disk (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / name).is_file() for name in ("dataset_dict.json", "state.json"))


def file_format(path: Path, declared: str, key: str) -> str:
    """The reader for `path`: the declared file_format, else by extension; DatasetError for one medtune cannot read."""
    if declared != "auto":
        return declared
    if is_saved_dataset(path):
        return "saved"
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(
            f"{key}: {path} has the extension {path.suffix or '(none)'!r}; medtune reads .jsonl, .json, .csv, .tsv, "
            f".parquet and datasets save_to_disk folders. Convert the file, or set {key.rsplit('.', 1)[0]}."
            "file_format to how it is written."
        )
    return fmt


def _json_items(path: Path, sink: RowSink) -> Rows:
    """The objects of a JSON array, each with the line it starts on."""
    text = read_text(path)
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if not text[start:].startswith("["):
        raise DatasetError(
            f"{path}: a .json file must hold one array of objects ([{{...}}, {{...}}]); for one object per line "
            "name the file .jsonl (or set file_format: jsonl)."
        )
    rows: Rows = []
    pos = start + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return rows
        line = text.count("\n", 0, pos) + 1
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno}).") from None
        if isinstance(item, dict):
            rows.append((f"{path}:{line}", item))
        else:
            sink.bad(f"{path}:{line}", "<item>", f"a JSON {type(item).__name__}, expected an object")


def _parquet_rows(path: Path) -> tuple[list[str], Rows]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own types for a file that is not Parquet
        raise DatasetError(f"{path}: not a readable Parquet file ({err}).") from None
    return table.column_names, [(f"{path} row {i}", row) for i, row in enumerate(table.to_pylist())]


def read_table(path: Path, fmt: str, sink: RowSink) -> tuple[list[str], Rows]:
    """(the file's columns, its rows with their locations); the columns are the union of the rows' keys."""
    if fmt == "parquet":
        return _parquet_rows(path)
    if fmt in ("csv", "tsv"):
        delimiter = "\t" if fmt == "tsv" else ","
        rows = [(f"{path}:{line}", row) for line, row in iter_csv(path, delimiter=delimiter)]
    elif fmt == "json":
        rows = _json_items(path, sink)
    elif fmt == "jsonl":
        rows = [(f"{path}:{line}", row) for line, row in iter_jsonl(path, sink)]
    else:
        raise DatasetError(f"{path}: format {fmt!r} is not a table file (jsonl, json, csv, tsv, parquet).")
    seen: dict[str, None] = {}
    for _, row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen), rows


def _split_rows(dataset: Any, where: str, split: str | None) -> tuple[list[str], Rows]:
    label = f"{where} [{split}]" if split else where
    return list(dataset.column_names), [(f"{label} row {i}", dict(row)) for i, row in enumerate(dataset)]


def read_dataset_dict(path_or_id: str, hub: bool, hub_config: str | None = None) -> dict[str | None, Any]:
    """{split: (columns, rows)} of a save_to_disk folder or a hub dataset; one Dataset gives {None: ...}."""
    import datasets  # slow to import: only when a dataset needs it

    try:
        if hub:
            loaded = datasets.load_dataset(path_or_id, hub_config)
            where = f"hub {path_or_id}{'/' + hub_config if hub_config else ''}"
        else:
            loaded = datasets.load_from_disk(path_or_id)
            where = path_or_id
    except Exception as err:  # network, auth, a folder that is not a dataset: one line with the cause
        what = "load the hub dataset" if hub else "read the save_to_disk folder"
        raise DatasetError(f"could not {what} {path_or_id!r}: {type(err).__name__}: {err}") from None
    if isinstance(loaded, datasets.DatasetDict):
        return {split: _split_rows(loaded[split], where, split) for split in loaded}
    return {None: _split_rows(loaded, where, None)}
