"""Sweeps that survive bad jobs: every failure becomes that job's summary.json, and the exit status counts them.

Hydra's basic launcher runs the jobs of `python -m medtune.train -m ...` one after another in this process. An
exception a job raises is kept until the sweep ends (then re-raised with a traceback), and a `SystemExit` ends the
whole sweep at once; so `run_job` catches both, records the job as failed in its run directory (`run/status`,
`run/error`, `run/failed_phase`, `run/overrides`) and returns. After the sweep, `exit_status()` is the number of
failed jobs (as in GNU parallel: 1-100, 101 for more), logged in one line that names them.

A launcher that runs the jobs in other processes (hydra/launcher=slurm or submitit_local) leaves this process's list
empty; `JobRecords`, a Hydra callback, then reads every job's record from the sweep directory once the launcher has
waited for them, so the exit status counts those failures too (a job killed before it wrote one counts as failed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from medtune.config import ConfigError
from medtune.files.space import explain
from medtune.runtime.run_record import write_failed_summary
from medtune.runtime.watchdog import RunTerminated

log = logging.getLogger("medtune.train")
MAX_EXIT_STATUS = 101  # exit statuses above ~125 mean signals to shells


@dataclass
class Job:
    """One finished job of this process's sweep."""

    num: int
    overrides: list[str]
    run_dir: Path
    error: str | None  # None: ok


JOBS: list[Job] = []


def run_job(train: Callable[[], dict[str, Any]], run_dir: Path, num: int, overrides: list[str]) -> dict[str, Any]:
    """Run one sweep job; any failure is written to its summary.json and returned, never raised."""
    try:
        summary = train()
    except RunTerminated:  # a signal to the sweep's process ends the sweep (the job recorded itself)
        raise
    except (Exception, SystemExit) as err:  # SystemExit: whatever calls sys.exit must not end the other jobs
        phase = "config" if isinstance(err, ConfigError) else "setup"
        summary = {"run/status": "failed", "run/error": f"{type(err).__name__}: {err}", "run/failed_phase": phase}
        if isinstance(err, ConfigError) or explain(err):
            log.error("job #%d: %s", num, explain(err) or f"invalid config: {err}")
        else:
            log.exception("job #%d failed before it could record itself", num)
    if summary.get("run/status") != "ok":
        failure = {**summary, "run/overrides": " ".join(overrides), "run/job": num}
        try:
            summary = write_failed_summary(run_dir, failure)
        except OSError as err:  # the job's directory cannot take even that: the log line is the record
            log.error("job #%d: summary.json not written: %s", num, explain(err) or err)
            summary = failure
    JOBS.append(Job(num, list(overrides), run_dir, None if summary.get("run/status") == "ok" else summary["run/error"]))
    return summary


def exit_status() -> int:
    """0 when every job of this process's sweep succeeded, else their number (capped); logs one line naming them."""
    failed = [job for job in JOBS if job.error is not None]
    if not failed:
        return 0
    varying = _varying(JOBS)
    names = "; ".join(f"#{j.num} {' '.join(o for o in j.overrides if o in varying) or j.run_dir.name}" for j in failed)
    log.error(
        "sweep: %d of %d jobs failed: %s. Each failed job's summary.json has run/error.",
        len(failed),
        len(JOBS),
        names,
    )
    return min(len(failed), MAX_EXIT_STATUS)


class JobRecords(Callback):
    """After a sweep whose jobs ran in other processes, this process learns their outcomes from their records."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not JOBS:
            JOBS.extend(read_jobs(Path(str(config.hydra.sweep.dir))))


def read_jobs(sweep_dir: Path) -> list[Job]:
    """The jobs of a sweep directory (each subdirectory with `.hydra/overrides.yaml`), in job order, from their
    summary.json: ok, failed with its run/error, or failed because it wrote none."""
    jobs = []
    for job_dir in sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")):
        overrides = [str(o) for o in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []]
        try:
            summary = json.loads((job_dir / "summary.json").read_text(encoding="utf-8"))
            error = None if summary.get("run/status") == "ok" else str(summary.get("run/error", "failed"))
        except (OSError, ValueError):
            error = "no summary.json: the job ended before it could record itself (see its submitit log)"
        num = job_dir.name.split("_", 1)[0]
        jobs.append(Job(int(num) if num.isdigit() else len(jobs), overrides, job_dir, error))
    return sorted(jobs, key=lambda job: job.num)


def _varying(jobs: list[Job]) -> set[str]:
    """The overrides that tell the jobs apart (those not shared by every job)."""
    common = set.intersection(*(set(j.overrides) for j in jobs))
    return {o for j in jobs for o in j.overrides} - common
