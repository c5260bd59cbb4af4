"""The datasets of `data.datasets.<name>`: a Source like the built-in ones, read into Records by its declaration.

    source = DatasetSource("my_ja_mcq", data_cfg.datasets["my_ja_mcq"])
    source.files(data_cfg)        # the local files it reads (their sizes and mtimes key the prepared copy)
    source.read(data_cfg, sink)   # {split: [Record]}; bad rows go to the sink (file, line, field)

Paths are relative to data.data_dir; `medtune://` points inside the installed package (the shipped examples).
Without `splits`, one file (or glob) is all `train`, a saved or hub dataset keeps its own splits; `split_column`
routes rows by a column; `holdout` moves a seeded fraction of one split (by a keyed hash of each row's id) into a
new one. Row ids are the column `columns.id` names, else the file's own `id` column when it has one, else
`<file>-<line>` (or `<split>-<row>`); an id must be unique within its split (a repeat is a bad row), while the same id
in two splits is two rows (what keeps a test question out of training is the leakage guard, which compares text).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.config import DataConfig, DatasetConfig
from medtune.config.checks import resolve_dir
from medtune.data.schema import Record, RowError, RowSink, text_field
from medtune.data.sources.dataset_rows import BUILDERS
from medtune.data.sources.tables import (
    PACKAGE_PREFIX,
    DatasetError,
    check_readable,
    file_format,
    glob_path,
    is_saved_dataset,
    read_dataset_dict,
    read_table,
    resolve_path,
)

Entry = tuple[str, dict[str, Any], str | None]  # (location, row, id by position; None: read the row's `id` column)
OWN_ID = "id"  # a file's own id column, used when columns.id does not name another


@dataclass(frozen=True)
class DatasetSource:
    """A dataset of data.datasets as a Source: the same questions prepare and preflight ask of a built-in source."""

    name: str
    cfg: DatasetConfig
    # said when a run names a split this dataset does not have
    split_hint = " (declare it: splits, split_column or holdout)"

    @property
    def language(self) -> str:
        """The language of its rows (the declaration's `language`)."""
        return self.cfg.language

    def is_hub(self, data_cfg: DataConfig) -> bool:
        """True when `path` is read from the hub: data.hub=true and nothing on disk matches it."""
        return self._at(data_cfg).is_hub()

    def splits(self, data_cfg: DataConfig) -> None:
        """None: the data decides the splits (a split column, a holdout, a saved or hub dataset's own splits)."""
        return None

    def files(self, data_cfg: DataConfig) -> list[Path]:
        """Every local file the dataset reads ([] from the hub); DatasetError when a path matches nothing."""
        return self._at(data_cfg).files()

    def identity(self, data_cfg: DataConfig) -> str:
        """What decides its rows besides the files: the declaration, and the hub id when read from the hub."""
        text = json.dumps(dataclasses.asdict(self.cfg), sort_keys=True)
        return text + (f"hub:{self.name}:{self.cfg.path}" if self.is_hub(data_cfg) else "")

    def read(self, data_cfg: DataConfig, sink: RowSink) -> dict[str, list[Record]]:
        """Every split's Records: split by column and holdout, ids checked, rows built (bad ones to the sink)."""
        return self._at(data_cfg).read_all(sink)

    def _at(self, data_cfg: DataConfig) -> _Located:
        return _Located(self.name, self.cfg, resolve_dir(data_cfg.data_dir), data_cfg.hub)


@dataclass(frozen=True)
class _Located:
    """One dataset of data.datasets and where its data is (local files, a saved folder or the hub)."""

    name: str
    cfg: DatasetConfig
    data_dir: Path
    hub: bool = False  # data.hub: a path that is not on disk is a hub id

    @property
    def key(self) -> str:
        """The config key of this dataset, for messages."""
        return f"data.datasets.{self.name}"

    def root(self) -> Path:
        """Where `path` points (a file, folder or glob), or data_dir when only `splits` name files."""
        return resolve_path(self.cfg.path, self.data_dir) if self.cfg.path else self.data_dir

    def is_hub(self) -> bool:
        """True when `path` is read from the hub: data.hub=true and nothing on disk matches it."""
        path = self.cfg.path or ""
        return self.hub and bool(path) and not path.startswith(PACKAGE_PREFIX) and not glob_path(self.root())

    def is_saved(self) -> bool:
        """True when `path` is a save_to_disk folder (or file_format says so)."""
        return self.cfg.file_format == "saved" or is_saved_dataset(self.root())

    def _by_file(self) -> bool:
        return bool(self.cfg.splits) and self.cfg.split_column is None and not self.is_saved() and not self.is_hub()

    def _missing(self, what: str, pattern: Path) -> DatasetError:
        hub = "" if self.hub else "; a hub id needs data.hub=true"
        return DatasetError(
            f"{self.key}: {what} {pattern} matches no file (relative paths are under data.data_dir={self.data_dir})"
            f"{hub}. Fix the path, or set data.data_dir (MEDTUNE_DATA_DIR)."
        )

    def split_files(self) -> dict[str, list[Path]]:
        """{split: files} when `splits` name files; {'': files} for one file, glob or folder of files."""
        root = self.root()
        if self._by_file():
            if root.is_file():
                raise DatasetError(
                    f"{self.key}: splits name files but path {root} is a file; set path to their folder."
                )
            out = {}
            for split, value in self.cfg.splits.items():
                patterns = value if isinstance(value, list) else [value]
                out[split] = [f for p in patterns for f in glob_path(resolve_path(str(p), root))]
                if not out[split]:
                    raise self._missing(f"splits.{split}", resolve_path(str(patterns[0]), root))
                for path in out[split]:
                    check_readable(path, f"{self.key}.splits.{split}")
            self._check_disjoint(out)
            return out
        files = glob_path(root)
        if files == [root] and root.is_dir():
            files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise self._missing("path", root)
        for path in files:
            check_readable(path, f"{self.key}.path")
        return {"": files}

    def _check_disjoint(self, by_split: dict[str, list[Path]]) -> None:
        """One file read by two splits would evaluate on rows it trains on: stop and name the file."""
        first: dict[Path, str] = {}
        for split, files in by_split.items():
            for path in files:
                other = first.setdefault(path.resolve(), split)
                if other != split:
                    raise DatasetError(
                        f"{self.key}: splits.{other} and splits.{split} both read {path}; a row is either trained on "
                        "or evaluated, so give each split its own file, or declare one file with holdout: "
                        "{fraction: 0.2} to set a seeded part of it aside."
                    )

    def files(self) -> list[Path]:
        """Every local file the dataset reads ([] from the hub); DatasetError when a path matches nothing."""
        if self.is_hub():
            return []
        if self.is_saved():
            return sorted(p for p in self.root().rglob("*") if p.is_file())
        return [f for files in self.split_files().values() for f in files]

    def _check_columns(self, columns: list[str], where: str) -> None:
        """A column named in the config that the table does not have: stop with the columns it has."""
        wanted = {k: v for k, v in self.cfg.columns.items() if k not in ("role", "content")}  # keys inside messages
        if self.cfg.format in ("instruction", "alpaca") and wanted.get("input") == "input":
            wanted.pop("input")  # the default input column is optional
        if self.cfg.split_column:
            wanted["split_column"] = self.cfg.split_column
        for field_name, value in wanted.items():
            for column in value if isinstance(value, list) else [value]:
                if column not in columns:
                    raise DatasetError(
                        f"{where}: no column {column!r} ({self.key}.columns.{field_name}); its columns are "
                        f"{columns}. Set {self.key}.columns.{field_name} to one of them."
                    )

    def _table(self, path: Path, sink: RowSink) -> list[Entry]:
        columns, rows = read_table(path, file_format(path, self.cfg.file_format, f"{self.key}.path"), sink)
        if rows:
            self._check_columns(columns, str(path))
        try:
            stem = str(path.relative_to(self.root() if self.root().is_dir() else self.root().parent).with_suffix(""))
        except ValueError:
            stem = path.stem
        if self._own_ids(columns):
            return [(loc, row, None) for loc, row in rows]
        return [(loc, row, f"{stem}-{loc.rsplit(':', 1)[-1].rsplit(' ', 1)[-1]}") for loc, row in rows]

    def _own_ids(self, columns: list[str]) -> bool:
        """True when rows carry their ids in the file's own `id` column (columns.id names no other column)."""
        return OWN_ID in columns and "id" not in self.cfg.columns

    def raw_splits(self, sink: RowSink) -> dict[str, list[Entry]]:
        """Rows per split as the data gives them ('' = not yet split: one pool for split_column or train)."""
        if self.is_hub() or self.is_saved():
            target = self.cfg.path if self.is_hub() else str(self.root())
            loaded = read_dataset_dict(target, self.is_hub(), self.cfg.hub_config)
            out: dict[str, list[Entry]] = {}
            for split, (columns, rows) in loaded.items():
                if rows:
                    self._check_columns(columns, f"{target} [{split or 'all'}]")
                own = self._own_ids(columns)
                out[split or ""] = [
                    (loc, row, None if own else f"{split or 'all'}-{i}") for i, (loc, row) in enumerate(rows)
                ]
            return self._pick_splits(out)
        return {split: [e for f in files for e in self._table(f, sink)] for split, files in self.split_files().items()}

    def _pick_splits(self, loaded: dict[str, list[Entry]]) -> dict[str, list[Entry]]:
        if self.cfg.split_column or not self.cfg.splits:
            if self.cfg.split_column:
                return {"": [e for entries in loaded.values() for e in entries]}
            return {split or "": entries for split, entries in loaded.items()}
        missing = {ours: theirs for ours, theirs in self.cfg.splits.items() if theirs not in loaded}
        if missing:
            raise DatasetError(f"{self.key}.splits maps {missing} but the dataset's splits are {sorted(loaded)}.")
        return {ours: loaded[theirs] for ours, theirs in self.cfg.splits.items()}

    def read_all(self, sink: RowSink) -> dict[str, list[Record]]:
        """Every split's Records: split by column and holdout, ids checked, rows built (bad ones to the sink)."""
        raw = self.raw_splits(sink)
        if "" in raw:
            raw = self._route(raw.pop(""), sink) if self.cfg.split_column else {"train": raw.pop("")}
        entries = self._with_ids(raw, sink)
        if self.cfg.holdout is not None:
            entries = self._hold_out(entries)
        build = BUILDERS[self.cfg.format]
        out: dict[str, list[Record]] = {}
        for split, items in entries.items():
            start = len(sink.records)
            for location, row, native_id in items:
                sink.add(location, build, row, self.cfg, self.name, split, native_id)
            out[split] = sink.records[start:]
            if not out[split]:
                why = "every row was bad and skipped" if items else "no rows"
                raise DatasetError(f"{self.key}: split {split!r} is empty ({why}); give it rows or leave it out.")
        return out

    def _route(self, pool: list[Entry], sink: RowSink) -> dict[str, list[Entry]]:
        """Rows by their split column (its values, or the splits they are mapped to)."""
        column = str(self.cfg.split_column)
        to_split = {str(theirs): ours for ours, theirs in self.cfg.splits.items()}
        out: dict[str, list[Entry]] = {ours: [] for ours in self.cfg.splits}  # a mapped split must get rows
        for location, row, auto_id in pool:
            value = row.get(column)
            if value is None or str(value).strip() == "":
                sink.bad(location, column, "missing (the split column names each row's split)")
                continue
            split = to_split.get(str(value).strip(), None if to_split else str(value).strip())
            if split is not None:  # a value the splits mapping leaves out: not used
                out.setdefault(split, []).append((location, row, auto_id))
        return out

    def _with_ids(self, raw: dict[str, list[Entry]], sink: RowSink) -> dict[str, list[Entry]]:
        """Each entry with its row id: columns.id, else the row's own `id` column, else the one by position; missing
        ids are bad rows, and so is an id repeated within its split (two splits may share an id: ids are per split)."""
        mapped = self.cfg.columns.get("id")
        out: dict[str, list[Entry]] = {}
        for split, items in raw.items():
            kept, first = out.setdefault(split, []), {}
            for location, row, by_position in items:
                column = mapped or (OWN_ID if by_position is None else None)
                native = by_position
                if column:
                    try:
                        native = text_field(row, column)
                    except RowError as err:  # the id cell is missing or empty
                        hint = "" if mapped else f" (the file has an id column: give every row one, or set {self.key}"
                        sink.bad(location, column, err.reason + (hint and f"{hint}.columns.id to another column)"))
                        continue
                if native in first:
                    sink.bad(
                        location,
                        column or "<id>",
                        f"id {native!r} repeats the row at {first[native]}; ids must be unique within a split (fix "
                        f"the id, or set {self.key}.columns.id to a column whose values are unique)",
                    )
                    continue
                first[native] = location
                kept.append((location, row, native))
        return out

    def _hold_out(self, entries: dict[str, list[Entry]]) -> dict[str, list[Entry]]:
        """Move round(fraction x rows) of `from_split`, chosen by a keyed hash of (seed, row id), into `split`."""
        h = self.cfg.holdout
        assert h is not None
        pool = entries.get(h.from_split)
        if pool is None:
            raise DatasetError(
                f"{self.key}.holdout.from_split={h.from_split!r} is not a split; splits: {list(entries)}."
            )
        if h.split in entries:
            raise DatasetError(f"{self.key}.holdout.split={h.split!r} is already a split of the data; name another.")
        n = round(h.fraction * len(pool))
        if not 0 < n < len(pool):
            raise DatasetError(
                f"{self.key}.holdout: {h.fraction} of the {len(pool)} rows of {h.from_split!r} is {n} rows, which "
                f"leaves {h.split!r} or {h.from_split!r} empty; change holdout.fraction or add rows."
            )

        def key(entry: Entry) -> bytes:
            return hashlib.blake2b(f"{h.seed}\x00{entry[2]}".encode(), digest_size=16).digest()

        held = {id(e) for e in sorted(pool, key=key)[:n]}
        return entries | {
            h.from_split: [e for e in pool if id(e) not in held],
            h.split: [e for e in pool if id(e) in held],
        }
