"""Experiment tracking that never stops training: W&B (offline unless asked), plus local files, always.

    tracker = build_tracker(cfg.logger, config_dict, run_dir, rank)
    tracker.log({"train/loss": 2.1, "train/tokens_per_s": 5300.0}, step=10)
    tracker.log_table("forgetting", ["lang", "delta_pp"], [["ko", -1.2], ["en", 0.4]])
    tracker.summary({"eval/lang/ko/acc": 0.41})
    tracker.finish(exit_code=0)

Whatever the backend, every run dir gets `metrics.jsonl` (one line per `log` call), `summary.json` (the last value
of every logged metric plus what `summary` was given), `tables/<name>.json` and `config.yaml`, so
`python -m medtune.report` never needs W&B. A W&B failure (no network, bad key, server down) is logged once and the
tracker carries on with the local files only. Ranks other than 0 get a tracker that does nothing.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from medtune.config import LoggerConfig
from medtune.files.atomic import atomic_write_text
from medtune.files.space import with_path
from medtune.runtime.wandb_run import start_wandb

log = logging.getLogger("medtune.runtime.tracking")


def _scalar(value: Any) -> Any:
    """A JSON-friendly scalar: tensors and numpy numbers become Python numbers."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write through a uniquely named temporary file so a reader (or a crash) never sees half a file, and two
    threads writing at once (the watchdog's and the main one) never take each other's temporary file."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


class Tracker:
    """Local files always, plus an optional W&B run that is dropped (not fatal) at its first error."""

    def __init__(self, run_dir: Path, backend: str, wandb_run: Any = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self._wandb = wandb_run
        self._summary: dict[str, Any] = {}
        # The watchdog's thread records a failure while the main thread may be logging: one writer at a time, so
        # that summary.json is never serialised mid-update nor overwritten by an older copy.
        self._summary_lock = threading.Lock()
        self._start_s = time.monotonic()
        self._finished = False
        self._jsonl = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self._csv = None
        if backend == "csv":
            path = self.run_dir / "metrics.csv"
            new = not path.exists() or path.stat().st_size == 0
            self._csv = path.open("a", encoding="utf-8", newline="")
            if new:  # long format (one row per metric) because the set of keys changes from step to step
                csv.writer(self._csv).writerow(["step", "elapsed_s", "key", "value"])

    @property
    def wandb_run(self) -> Any:
        """The live W&B run, or None (local-only, or W&B failed)."""
        return self._wandb

    def _wandb_call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._wandb is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # any W&B failure must leave training running
            log.warning("W&B %s failed (%s: %s); continuing with local files only.", what, type(err).__name__, err)
            self._wandb = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record metrics at `step`: one line of metrics.jsonl (and metrics.csv, W&B when enabled)."""
        clean = {k: _scalar(v) for k, v in metrics.items()}
        elapsed_s = round(time.monotonic() - self._start_s, 3)
        try:
            self._jsonl.write(json.dumps({"step": int(step), "elapsed_s": elapsed_s, **clean}, default=str) + "\n")
            self._jsonl.flush()
        except OSError as err:  # a write to an open file names no file: a full disk's message must name this one
            raise with_path(err, self.run_dir / "metrics.jsonl") from None
        if self._csv is not None:
            writer = csv.writer(self._csv)
            writer.writerows([step, elapsed_s, k, v] for k, v in clean.items())
            self._csv.flush()
        with self._summary_lock:
            self._summary.update(clean)
        self._wandb_call("log", lambda: self._wandb.log(clean, step=int(step)))

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        """Record a table: tables/<name>.json locally, a W&B Table when W&B is on."""
        for i, row in enumerate(rows):
            if len(row) != len(columns):
                raise ValueError(f"log_table({name!r}): row {i} has {len(row)} values for {len(columns)} columns")
        clean_rows = [[_scalar(v) for v in row] for row in rows]
        table_dir = self.run_dir / "tables"
        table_dir.mkdir(exist_ok=True)
        _write_json_atomic(table_dir / f"{name.replace('/', '_')}.json", {"columns": columns, "rows": clean_rows})

        def _send() -> None:
            import wandb

            self._wandb.log({name: wandb.Table(columns=list(columns), data=clean_rows)})

        self._wandb_call("log_table", _send)

    def log_images(self, images: dict[str, Path]) -> None:
        """Send PNG files to W&B as images (they already live on disk, so nothing local is written)."""

        def _send() -> None:
            import wandb

            self._wandb.log({name: wandb.Image(str(path)) for name, path in images.items()})

        self._wandb_call("log_images", _send)

    def summary(self, metrics: dict) -> None:
        """Merge `metrics` into summary.json (and the W&B run summary); written at once."""
        clean = {k: _scalar(v) for k, v in metrics.items()}
        with self._summary_lock:
            self._summary.update(clean)
            self._write_summary()
        self._wandb_call("summary", lambda: self._wandb.summary.update(clean))

    def _write_summary(self) -> None:
        _write_json_atomic(self.run_dir / "summary.json", self._summary)

    def finish(self, exit_code: int = 0) -> None:
        """Write the final summary.json (with run/status and run/wall_s) and close W&B; safe to call twice."""
        if self._finished:
            return
        self._finished = True
        with self._summary_lock:
            self._summary.setdefault("run/status", "ok" if exit_code == 0 else "failed")
            self._summary.setdefault("run/wall_s", round(time.monotonic() - self._start_s, 3))
            self._write_summary()
        self._jsonl.close()
        if self._csv is not None:
            self._csv.close()
        final = {k: self._summary[k] for k in ("run/status", "run/wall_s")}
        self._wandb_call("summary", lambda: self._wandb.summary.update(final))
        self._wandb_call("finish", lambda: self._wandb.finish(exit_code=exit_code))
        self._wandb = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


class NullTracker:
    """What ranks other than 0 get: same methods, no files, no network."""

    run_dir = None
    backend = "none"
    wandb_run = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Do nothing (not rank 0)."""

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        """Do nothing (not rank 0)."""

    def log_images(self, images: dict[str, Path]) -> None:
        """Do nothing (not rank 0)."""

    def summary(self, metrics: dict) -> None:
        """Do nothing (not rank 0)."""

    def finish(self, exit_code: int = 0) -> None:
        """Do nothing (not rank 0)."""

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _write_config(run_dir: Path, config: dict) -> None:
    """config.yaml of the resolved config, unless the caller already wrote one."""
    path = run_dir / "config.yaml"
    if path.exists():
        return
    from omegaconf import OmegaConf

    path.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))


def build_tracker(
    logger_cfg: LoggerConfig, config: dict, run_dir: Path, rank: int = 0, resume: bool = False
) -> Tracker | NullTracker:
    """The tracker of `logger_cfg.backend` for rank 0 (a no-op one for other ranks); never raises for W&B.

    `resume`: the run continues from a checkpoint, so W&B continues the run dir's W&B run (same id).
    """
    if rank != 0:
        return NullTracker()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(run_dir, config)
    wandb_run = start_wandb(logger_cfg, config, run_dir, resume) if logger_cfg.backend == "wandb" else None
    return Tracker(run_dir, logger_cfg.backend, wandb_run)
