"""The life of a command's run, shared by `medtune.train` and `medtune.evaluate`:

    start(hydra_main, suffix="_eval")            # console entry: the user's config folder, the run stamp, Hydra
    with exits_on_failure(log, bad_input=(...), failed=(...), logged=(...)):   # errors -> one line, an exit code
        summary = run_or_sweep(body)             # body(run_dir, multirun); a sweep job's failure is recorded
        result = body(hydra_run_dir())           # a command without sweeps
    with session(cfg.sharding, cfg.trainer.device) as (dist, watchdog):   # process group and watchdog, then gone

Exit codes: 2 for bad input (an invalid config, a damaged adapter), 1 for a failure, 128 + the signal for a run
stopped by SIGTERM/SIGINT, as a shell expects. The line names the key or file and the fix; no traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtune.config import ConfigError, ShardingConfig, hydra_argv
from medtune.files.space import explain
from medtune.runtime import sweep
from medtune.runtime.launch import set_run_stamp
from medtune.runtime.watchdog import RunTerminated, Watchdog

if TYPE_CHECKING:  # torch: imported by a session, not before the config is checked
    from medtune.runtime.process_group import DistInfo

NO_RUN_FLAGS = ("--help", "-h", "--cfg", "-c")  # Hydra prints and exits: no run directory, no rank to agree with


def start(hydra_main: Callable[[], Any], suffix: str = "") -> None:
    """Console entry: read --config-dir DIR / $MEDTUNE_CONFIG_DIR (config/location.py), fix the run directory's
    timestamp (shared by all torchrun ranks; `suffix` tells a command's runs apart), then let Hydra run."""
    try:
        sys.argv = hydra_argv(sys.argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    set_run_stamp(os.environ, runs=not any(a in NO_RUN_FLAGS for a in sys.argv), suffix=suffix)
    hydra_main()


@contextlib.contextmanager
def exits_on_failure(
    log: logging.Logger,
    bad_input: tuple[type[BaseException], ...] = (),
    failed: tuple[type[BaseException], ...] = (),
    logged: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Errors the user can act on become one line and an exit code: an invalid config and `bad_input` 2, `failed` 1
    (each logged as one line), `logged` 1 without a line (the run wrote it; an OSError only when it is a full or
    unwritable disk, else its traceback stays), a signal 128 + its number. Anything else keeps its traceback."""
    try:
        yield
    except RunTerminated as err:  # recorded as terminated by the run
        sys.exit(err.exit_code)
    except ConfigError as err:  # also a resume whose checkpoint belongs to another config
        log.error("invalid config: %s", err)
        sys.exit(2)
    except bad_input as err:
        log.error("%s", err)
        sys.exit(2)
    except failed as err:
        log.error("%s", err)
        sys.exit(1)
    except logged as err:
        if isinstance(err, OSError) and not explain(err):
            raise
        sys.exit(1)


def hydra_run_dir() -> Path:
    """The run directory Hydra chose for this run (hydra.run.dir, or the job's folder in a sweep)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run_or_sweep(body: Callable[[Path, bool], dict[str, Any]]) -> dict[str, Any]:
    """`body(run_dir, multirun)` in Hydra's run directory; in a sweep (-m) a failed job is recorded, never raised."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    run_dir = hydra_run_dir()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        overrides = list(hydra_cfg.overrides.task)
        return sweep.run_job(lambda: body(run_dir, True), run_dir, hydra_cfg.job.num, overrides)
    return body(run_dir, False)


@contextlib.contextmanager
def session(sharding: ShardingConfig, device: str, replicas_ok: bool = False) -> Iterator[tuple[DistInfo, Watchdog]]:
    """This process in its launch (process group, device) and its watchdog (not started: the caller decides what
    it watches); on leaving, the watchdog stops and the process group is left, on success or error alike.

    `replicas_ok`: several processes with sharding=none are allowed (evaluation: every rank holds the whole model).
    """
    from medtune.runtime import process_group

    dist = process_group.init(sharding, device, replicas_ok=replicas_ok)
    watchdog = Watchdog(sharding.timeout_min * 60)
    try:
        yield dist, watchdog
    finally:
        watchdog.stop()
        process_group.cleanup()
