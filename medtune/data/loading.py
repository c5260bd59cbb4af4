"""`load_records`: prepared records of one split, with the leakage guard applied to training loads.

A (source, split) listed in data.eval_splits, or the `eval_split` of a dataset declared in data.datasets, is
evaluation data and is returned as is. Any other split is a training candidate: KorMedMCQA loses its law rows
(data.exclude_law_from_train) and every row duplicating an evaluation question, exactly or nearly, is dropped
(data.exclude_eval_overlap). The drops are logged and counted.
"""

from __future__ import annotations

import logging
from typing import Any

from medtune.config import DataConfig
from medtune.data.leakage import DupIndex, Overlap
from medtune.data.prepare import prepare_source, read_prepared, resolve_dir, version_key
from medtune.data.schema import Record
from medtune.data.sources.korean import is_law_block, law_uids
from medtune.data.sources.registry import SOURCES, dataset_sources, parse_spec, resolve

log = logging.getLogger(__name__)
_INDEX_CACHE: dict[tuple, tuple[DupIndex, list[str]]] = {}


def eval_split_specs(data_cfg: DataConfig) -> list[str]:
    """The "<source>:<split>" specs that only ever evaluate: data.eval_splits and each declared dataset's eval_split."""
    datasets = [f"{name}:{ds.eval_split}" for name, ds in (data_cfg.datasets if data_cfg is not None else {}).items()]
    return list(data_cfg.eval_splits) + [spec for spec in datasets if spec not in data_cfg.eval_splits]


def is_eval_split(source: str, split: str, data_cfg: DataConfig) -> bool:
    """True when `source:split` (or the source a view reads) is an evaluation split."""
    base, _ = resolve(source, data_cfg)
    return f"{base.name}:{split}" in set(eval_split_specs(data_cfg))


def assert_trainable(spec: str, data_cfg: DataConfig) -> None:
    """Raise when a training source spec names an evaluation split."""
    source, split = parse_spec(spec)
    if is_eval_split(source, split, data_cfg):
        raise ValueError(
            f"training source {spec!r} is an evaluation split (data.eval_splits); train on another split, or "
            "remove it from data.eval_splits if you really mean to train on it."
        )


def _available(source: str, data_cfg: DataConfig) -> bool:
    try:
        version_key(resolve(source, data_cfg)[0], data_cfg)
    except FileNotFoundError:
        return False
    return True


def guarded_specs(data_cfg: DataConfig) -> list[str]:
    """The eval splits the leakage guard holds against: data.eval_splits, and each declared dataset's eval split
    where that dataset has one (a training-only set has nothing to guard; one whose file is missing is kept, to be
    reported as missing)."""
    datasets = dataset_sources(data_cfg)
    out = []
    for spec in eval_split_specs(data_cfg):
        name, split = parse_spec(spec)
        source = datasets.get(name)
        if source is None or not _available(name, data_cfg) or split in prepare_source(source, data_cfg)["counts"]:
            out.append(spec)
    return out


def eval_index(data_cfg: DataConfig) -> tuple[DupIndex, list[str]]:
    """A duplicate index over every available evaluation split (cached per data version), and the missing specs."""
    specs = [parse_spec(s) for s in guarded_specs(data_cfg)]
    present = [(name, split) for name, split in specs if _available(name, data_cfg)]
    missing = [f"{name}:{split}" for name, split in specs if (name, split) not in present]
    key = (
        tuple((n, s, version_key(resolve(n, data_cfg)[0], data_cfg)) for n, s in present),
        data_cfg.near_dup_threshold,
        str(resolve_dir(data_cfg.cache_dir)),
    )
    if key not in _INDEX_CACHE:
        records = [r for name, split in present for r in read_prepared(resolve(name, data_cfg)[0], split, data_cfg)]
        _INDEX_CACHE[key] = (DupIndex(records, data_cfg.near_dup_threshold), missing)
        if missing:
            log.warning("leakage guard: eval splits %s have no data here and are not checked", missing)
    return _INDEX_CACHE[key]


def law_filter(records: list[Record], data_cfg: DataConfig) -> list[Record]:
    """KorMedMCQA records without the law rows (uids from law_subset.jsonl, else the block position rule)."""
    uids = set() if SOURCES["kormedmcqa"].is_hub(data_cfg) else law_uids(resolve_dir(data_cfg.data_dir))
    if uids:
        return [r for r in records if r.id.rsplit(":", 1)[1] not in uids]
    log.warning("law_subset.jsonl not found: excluding KorMedMCQA law rows by the block position rule only")

    def in_block(record: Record) -> bool:
        subject, year, period, q_number = record.id.rsplit(":", 1)[1].rsplit("-", 3)
        return is_law_block(subject, int(year), int(period), int(q_number))

    return [r for r in records if not in_block(r)]


def overlaps(records: list[Record], data_cfg: DataConfig) -> list[Overlap]:
    """Rows of `records` that duplicate an evaluation question (exact or near)."""
    index, _ = eval_index(data_cfg)
    return index.match(records)


def load_records(source: str, split: str, data_cfg: DataConfig, report: dict[str, Any] | None = None) -> list[Record]:
    """Records of `source:split` (preparing it first if needed); training loads pass the leakage guard.

    `report`, when given, receives flat counts: data/<source>:<split>/{loaded,dropped_law,dropped_exact,
    dropped_near,kept}.
    """
    base, keep = resolve(source, data_cfg)
    records = read_prepared(base, split, data_cfg)
    if keep is not None:
        records = [r for r in records if keep(r)]
        if not records:
            raise ValueError(f"view {source!r} selects no records of {base.name}:{split}; check the subject name.")
    counts = {"loaded": len(records), "dropped_law": 0, "dropped_exact": 0, "dropped_near": 0}
    if not is_eval_split(source, split, data_cfg):
        if base.name == "kormedmcqa" and data_cfg.exclude_law_from_train:
            kept = law_filter(records, data_cfg)
            counts["dropped_law"] = len(records) - len(kept)
            records = kept
        if data_cfg.exclude_eval_overlap:
            found = overlaps(records, data_cfg)
            dropped = {o.train_id for o in found}
            counts["dropped_exact"] = sum(o.kind == "exact" for o in found)
            counts["dropped_near"] = sum(o.kind == "near" for o in found)
            records = [r for r in records if r.id not in dropped]
        if counts["loaded"] != len(records):
            log.info("%s:%s training load: %s, kept %d", source, split, counts, len(records))
    counts["kept"] = len(records)
    if report is not None:
        report.update({f"data/{source}:{split}/{k}": v for k, v in counts.items()})
        report.update(skipped_rows(base, data_cfg))
    return records


def skipped_rows(source: Any, data_cfg: DataConfig) -> dict[str, int]:
    """Bad rows that data.on_bad_row=skip dropped from `source` (all splits), warned once: the run records them."""
    skipped = prepare_source(source, data_cfg)["skipped"]
    if not skipped:
        return {}
    by_file: dict[str, int] = {}
    for row in skipped:
        path = row["location"].rsplit(":", 1)[0]
        by_file[path] = by_file.get(path, 0) + 1
    worst, n_worst = max(by_file.items(), key=lambda kv: kv[1])
    first = skipped[0]
    log.warning(
        "%s: %d bad rows skipped (data.on_bad_row=skip), from %d file(s); most from %s (%d); first at %s (%s: %s)",
        source.name,
        len(skipped),
        len(by_file),
        worst,
        n_worst,
        first["location"],
        first["field"],
        first["reason"],
    )
    return {
        f"data/{source.name}/skipped_rows": len(skipped),
        f"data/{source.name}/files_with_skipped_rows": len(by_file),
    }
