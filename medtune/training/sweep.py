"""Sweeps that survive bad jobs: every failure becomes that job's summary.json, and the exit status counts them.

Hydra's basic launcher runs the jobs of `python -m medtune.train -m ...` one after another in this process. An
exception a job raises is kept until the sweep ends (then re-raised with a traceback), and a `SystemExit` ends the
whole sweep at once; so `run_job` catches both, records the job as failed in its run directory (`run/status`,
`run/error`, `run/failed_phase`, `run/overrides`) and returns. After the sweep, `exit_status()` is the number of
failed jobs (as in GNU parallel: 1-100, 101 for more), logged in one line that names them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.config import ConfigError
from medtune.files.space import explain
from medtune.training.run_record import write_failed_summary
from medtune.training.watchdog import RunTerminated

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


def _varying(jobs: list[Job]) -> set[str]:
    """The overrides that tell the jobs apart (those not shared by every job)."""
    common = set.intersection(*(set(j.overrides) for j in jobs))
    return {o for j in jobs for o in j.overrides} - common
