"""Prepared splits: each source read once into parquet, keyed by its raw files and the adapter version.

Layout: `<cache_dir>/prepared/<source>-<version key>/{<split>.parquet, manifest.json}`. The key hashes the
adapter version and the size and mtime of every raw file (or the hub id), so changed data re-prepares and an
unchanged source is read straight from parquet. A source is written to a uniquely named temporary folder and renamed
into place, under the entry's lock (`medtune.files.atomic`): jobs or ranks that need the same source at once prepare it
once, and none of them ever reads a half-written folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medtune.config import DataConfig
from medtune.config.checks import resolve_dir
from medtune.data.schema import BadRowError, Record, RowSink
from medtune.data.sources.registry import Source, all_sources
from medtune.files.atomic import atomic_dir, file_lock

log = logging.getLogger(__name__)

# Bump when an adapter's output changes for the same raw files: every prepared split is then rebuilt.
ADAPTER_VERSION = 1

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("language", pa.string()),
        ("subject", pa.string()),
        ("split", pa.string()),
        ("kind", pa.string()),
        ("question", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("answer_index", pa.int32()),
        ("answer_text", pa.string()),
        ("context", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ]
)


def source_splits(source: Source, data_cfg: DataConfig) -> tuple[str, ...]:
    """The splits a source provides: those it names, else (its data decides them) those its prepared copy holds."""
    splits = source.splits(data_cfg)
    return tuple(prepare_source(source, data_cfg)["counts"]) if splits is None else splits


def version_key(source: Source, data_cfg: DataConfig) -> str:
    """'<source>-<12 hex>': hashes the adapter version, what the source says decides its rows (a declaration, the hub
    copy) and its raw files' names, sizes and mtimes."""
    digest = hashlib.sha256(f"adapter-v{ADAPTER_VERSION}".encode())
    digest.update(source.identity(data_cfg).encode())
    for path in source.files(data_cfg):
        stat = path.stat()
        digest.update(f"{path.name}:{path.parent.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{source.name}-{digest.hexdigest()[:12]}"


def prepared_dir(source: Source, data_cfg: DataConfig) -> Path:
    """Where this version of the source is (or will be) prepared."""
    return resolve_dir(data_cfg.cache_dir) / "prepared" / version_key(source, data_cfg)


def read_source(source: Source, data_cfg: DataConfig) -> tuple[dict[str, list[Record]], list[dict[str, str]]]:
    """Read every split: ({split: records}, skipped bad rows); an id produced twice is a bug in the adapter."""
    sink = RowSink(on_bad_row=data_cfg.on_bad_row)
    by_split = source.read(data_cfg, sink)
    seen: set[str] = set()
    for records in by_split.values():
        for record in records:
            if record.id in seen:
                raise ValueError(f"source {source.name!r} produced the id {record.id!r} twice; fix its adapter.")
            seen.add(record.id)
    return by_split, sink.skipped


def _manifest(target: Path) -> dict[str, Any] | None:
    """The manifest of a prepared folder, or None while there is none (not yet, or mid-swap under --force)."""
    try:
        return json.loads((target / "manifest.json").read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None


def prepare_source(source: Source, data_cfg: DataConfig, force: bool = False) -> dict[str, Any]:
    """Prepare one source if its version is not cached yet; returns its manifest (counts, skipped rows).

    Jobs that need the same source at once take turns on the entry's lock: one prepares, the others find it done.
    """
    target = prepared_dir(source, data_cfg)
    manifest = None if force else _manifest(target)
    if manifest is None:
        with file_lock(target):
            manifest = None if force else _manifest(target)  # prepared by another job while this one waited
            if manifest is None:
                return _write_prepared(source, data_cfg, target) | {"up_to_date": False}
    return manifest | {"up_to_date": True}


def _write_prepared(source: Source, data_cfg: DataConfig, target: Path) -> dict[str, Any]:
    """Read the source and write its splits and manifest into `target` at once (atomic_dir); the manifest."""
    start_s = time.perf_counter()
    by_split, skipped = read_source(source, data_cfg)
    with atomic_dir(target, replace=True) as tmp:  # replace: --force, or a folder left without a manifest
        for split, records in by_split.items():
            table = pa.Table.from_pylist([r.to_row() for r in records], schema=SCHEMA)
            pq.write_table(table, tmp / f"{split}.parquet")
        manifest = {
            "source": source.name,
            "language": source.language,
            "version_key": target.name,
            "hub": source.is_hub(data_cfg),
            "counts": {split: len(records) for split, records in by_split.items()},
            "skipped": skipped,
            "prepare_s": round(time.perf_counter() - start_s, 3),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1))
    log.info("prepared %s: %s (%d bad rows skipped)", source.name, manifest["counts"], len(skipped))
    return manifest


def read_prepared(source: Source, split: str, data_cfg: DataConfig) -> list[Record]:
    """The prepared records of one split, preparing the source first if needed."""
    manifest = prepare_source(source, data_cfg)
    if manifest["skipped"] and data_cfg.on_bad_row == "error":
        first = manifest["skipped"][0]  # prepared earlier with on_bad_row=skip: do not hide those rows now
        raise BadRowError(first["location"], first["field"], first["reason"])
    if split not in manifest["counts"]:
        raise ValueError(f"source {source.name!r} has no split {split!r}; its splits are {sorted(manifest['counts'])}.")
    target = prepared_dir(source, data_cfg)
    with file_lock(target, shared=True):  # a --force rewrite swaps the folder under the exclusive lock
        table = pq.read_table(target / f"{split}.parquet")
    return [Record.from_row(row) for row in table.to_pylist()]


def prepare(data_cfg: DataConfig, sources: list[str] | None = None, force: bool = False) -> dict[str, dict[str, Any]]:
    """Prepare the named sources (default: every source whose raw files are present; a data.datasets entry whose files
    are missing stops with its error); {source: manifest}."""
    known = all_sources(data_cfg)
    if sources is None:
        sources = [name for name, source in known.items() if _present(source, data_cfg)]
    unknown = [name for name in sources if name not in known]
    if unknown:
        raise KeyError(f"unknown data sources {unknown}; known: {', '.join(known)}.")
    return {name: prepare_source(known[name], data_cfg, force=force) for name in sources}


def _present(source: Source, data_cfg: DataConfig) -> bool:
    try:
        version_key(source, data_cfg)
    except FileNotFoundError:
        return False
    return True
