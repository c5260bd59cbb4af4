"""Prepare the data sources and report counts and leakage.

    python -m medtune.data prepare                                  # every source found in $MEDTUNE_DATA_DIR
    python -m medtune.data prepare --sources kormedmcqa mmlu --data-dir ../shared/data
    python -m medtune.data prepare on_bad_row=skip near_dup_threshold=0.85   # any data.* value as key=value
    python -m medtune.data prepare +experiment=own_data_ja         # with a run's config: its declared datasets too
    python -m medtune.data prepare --config-dir my_config +experiment=own_vi   # a run config of your own folder

Prepared splits go to <cache_dir>/prepared (cache_dir: --cache-dir, else $MEDTUNE_CACHE_DIR/data, else
~/.cache/medtune/data). A second run finds every source up to date and only reprints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

import yaml

from medtune.config import GROUPS, OPTION_HELP, ConfigError, DataConfig, TrainConfig, compose, use_config_dir
from medtune.config.checks import cache_root
from medtune.data.loading import eval_split_specs, guarded_specs, is_eval_split, load_records
from medtune.data.prepare import prepare_source, resolve_dir, version_key
from medtune.data.schema import BadRowError
from medtune.data.sources.registry import SOURCES, all_sources
from medtune.data.sources.tables import DatasetError
from medtune.files.atomic import atomic_write_text, file_lock


def _is_hydra(item: str) -> bool:
    """An override for the whole run config (+experiment=..., a group choice, data.datasets.x...=...)."""
    key = item.partition("=")[0]
    head = key.split(".")[0]
    run_keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"data"}  # model.init=..., trainer.seed=...
    return key.startswith(("+", "~")) or head in (*GROUPS, *run_keys, "experiment") or key.startswith("data.datasets")


def build_config(args: argparse.Namespace) -> DataConfig:
    """DataConfig from env defaults (or a composed run config), --data-dir/--cache-dir/--hub and key=value overrides."""
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    data_items = [item for item in args.overrides if not _is_hydra(item)]
    values: dict[str, Any] = {
        "data_dir": os.environ.get("MEDTUNE_DATA_DIR", "data"),
        "cache_dir": str(cache_root() / "data"),
    }
    if len(data_items) < len(args.overrides):  # the run's config: its data section, declared datasets included
        run = compose([i if _is_hydra(i) else "data." + i.removeprefix("data.") for i in args.overrides])
        values = dataclasses.asdict(run.data) | {"datasets": run.data.datasets}
    for item in data_items:
        key, sep, raw = item.partition("=")
        key = key.removeprefix("data.")
        if not sep or key not in fields:
            raise ConfigError(f"override {item!r} is not <data field>=<value>; fields: {sorted(fields)}.")
        values[key] = yaml.safe_load(raw)
    if args.data_dir:
        values["data_dir"] = args.data_dir
    if args.cache_dir:
        values["cache_dir"] = args.cache_dir
    if args.hub:
        values["hub"] = True
    return DataConfig(**values)


def default_sources(data_cfg: DataConfig) -> list[str]:
    """Every source whose raw files are present (the built-in samples always are), and every declared dataset."""
    present = []
    for name, source in all_sources(data_cfg).items():
        try:
            version_key(source, data_cfg)
        except FileNotFoundError:
            continue
        present.append(name)
    return present


def leakage_rows(names: list[str], data_cfg: DataConfig) -> list[dict[str, Any]]:
    """One row per training-candidate split: loaded, law rows dropped, exact and near duplicates, kept."""
    rows = []
    known = all_sources(data_cfg)
    for name in names:
        for split in prepare_source(known[name], data_cfg)["counts"]:  # the manifest, read safely
            if is_eval_split(name, split, data_cfg):
                continue
            report: dict[str, Any] = {}
            load_records(name, split, data_cfg, report=report)
            prefix = f"data/{name}:{split}/"
            rows.append({"spec": f"{name}:{split}", **{k.removeprefix(prefix): v for k, v in report.items()}})
    return rows


def cached_leakage(names: list[str], data_cfg: DataConfig) -> tuple[list[dict[str, Any]], bool]:
    """The leakage rows, cached under the prepared folder by every input that can change them."""
    eval_names = sorted({spec.split(":")[0] for spec in eval_split_specs(data_cfg)})
    known, present = all_sources(data_cfg), default_sources(data_cfg)
    keys = [version_key(known[n], data_cfg) for n in sorted(set(names) | set(eval_names)) if n in present]
    splits = eval_split_specs(data_cfg)
    state = json.dumps([keys, splits, data_cfg.near_dup_threshold, data_cfg.exclude_law_from_train])
    path = (
        resolve_dir(data_cfg.cache_dir) / "prepared" / f"leakage-{hashlib.sha256(state.encode()).hexdigest()[:12]}.json"
    )
    if path.is_file():
        return json.loads(path.read_text()), True
    with file_lock(path):  # a second `prepare` at the same time waits for this report instead of redoing it
        if path.is_file():
            return json.loads(path.read_text()), True
        rows = leakage_rows(names, data_cfg)
        atomic_write_text(path, json.dumps(rows, indent=1))
    return rows, False


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain fixed-width table on stdout."""
    widths = [max(len(str(x)) for x in [h, *(r[i] for r in rows)]) for i, h in enumerate(headers)]
    for line in [headers, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                str(x).ljust(w) if i == 0 else str(x).rjust(w)
                for i, (x, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def prepare_command(args: argparse.Namespace) -> int:
    """Prepare the sources, print counts per source/split/language, then the leakage report."""
    data_cfg = build_config(args)
    names = args.sources or default_sources(data_cfg)
    known = all_sources(data_cfg)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown sources {unknown}; known: {', '.join(known)}")
    start_s = time.perf_counter()
    rows, fresh = [], 0
    for name in names:
        manifest = prepare_source(known[name], data_cfg, force=args.force)
        fresh += not manifest["up_to_date"]
        status = "up to date" if manifest["up_to_date"] else "prepared"
        for split, count in manifest["counts"].items():
            role = "eval" if is_eval_split(name, split, data_cfg) else "train"
            rows.append([name, split, manifest["language"], role, count, len(manifest["skipped"]), status])
    print(f"data_dir={resolve_dir(data_cfg.data_dir)}  cache={resolve_dir(data_cfg.cache_dir) / 'prepared'}")
    print_table(["source", "split", "lang", "role", "records", "skipped", "status"], rows)
    if not args.no_leakage:
        leak, cached = cached_leakage(names, data_cfg)
        print(
            f"\nleakage guard (training candidates vs eval splits {guarded_specs(data_cfg)}; near = 5-gram Jaccard "
            f">= {data_cfg.near_dup_threshold}){' [cached]' if cached else ''}"
        )
        print_table(
            ["training split", "loaded", "law rows", "exact dup", "near dup", "kept"],
            [
                [r["spec"], r["loaded"], r["dropped_law"], r["dropped_exact"], r["dropped_near"], r["kept"]]
                for r in leak
            ],
        )
    done = "all sources up to date" if fresh == 0 else f"{fresh} source(s) prepared"
    print(f"\n{done} in {time.perf_counter() - start_s:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m medtune.data`."""
    parser = argparse.ArgumentParser(prog="python -m medtune.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="prepare sources into parquet; print counts and the leakage report")
    prep.add_argument("--sources", nargs="+", help=f"default: every source present; known: {', '.join(SOURCES)}")
    prep.add_argument("--data-dir", help="raw data folder (default: $MEDTUNE_DATA_DIR)")
    prep.add_argument("--cache-dir", help="prepared data folder (default: $MEDTUNE_CACHE_DIR/data)")
    prep.add_argument("--config-dir", help=OPTION_HELP)
    prep.add_argument("--hub", action="store_true", help="load sources that have a hub copy from the hub")
    prep.add_argument("--force", action="store_true", help="prepare again even when up to date")
    prep.add_argument("--no-leakage", action="store_true", help="skip the leakage report")
    prep.add_argument(
        "overrides",
        nargs="*",
        help="data config values, e.g. on_bad_row=skip, or run config overrides such as "
        "+experiment=own_data_ja (its data section and declared datasets)",
    )
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides += extra  # key=value after an option (`--cache-dir DIR key=value`): argparse leaves it over
    if args.sources:  # `--sources a b key=value`: nargs="+" also takes the overrides that follow it
        args.overrides += [s for s in args.sources if "=" in s]
        args.sources = [s for s in args.sources if "=" not in s] or None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        use_config_dir(args.config_dir)
        return prepare_command(args)
    except (ConfigError, DatasetError, BadRowError) as err:  # the message names the key or file:line and the fix
        print(f"error: {err}", file=sys.stderr)
        return 2
