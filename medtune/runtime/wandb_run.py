"""The W&B side of tracking: offline unless asked, bounded waits, a resumed run continues its W&B run, never fatal.

run = start_wandb(cfg.logger, config, run_dir, resume=False)   # a wandb Run, or None (local files only)
init_wandb(cfg.logger, config, run_dir, mode="offline")          # wandb.init with every wait bounded; raises
"""

from __future__ import annotations

import logging
import netrc
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from medtune.config import LoggerConfig

log = logging.getLogger("medtune.runtime.tracking")
WANDB_ID_FILE = "wandb_run_id.txt"  # in the run dir: the W&B run a resume continues


def wandb_api_key_present() -> bool:
    """True when W&B has a key: WANDB_API_KEY, or a netrc entry for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        auth = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host or "")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def hydra_sweep_id() -> str | None:
    """`<date>_<time>` of the Hydra multirun sweep this job belongs to, or None outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    # The default sweep dir is runs/multirun/<date>/<time>: the time alone would join sweeps of different days.
    return "_".join(Path(hc.sweep.dir).parts[-2:])


def wandb_mode(logger_cfg: LoggerConfig) -> str:
    if logger_cfg.mode != "online":
        return "offline"
    if wandb_api_key_present():
        return "online"
    log.warning(
        "logger.mode=online but no W&B key (WANDB_API_KEY or `wandb login`); logging offline instead. "
        "Sync later with `wandb sync <run_dir>/wandb/offline-run-*`."
    )
    return "offline"


def init_wandb(logger_cfg: LoggerConfig, config: dict, run_dir: Path, mode: str, run_id: str | None = None) -> Any:
    """wandb.init with settings that bound every wait; `run_id`: continue that W&B run; raises what wandb raises."""
    import wandb

    timeout_s = float(logger_cfg.init_timeout_s)
    settings = wandb.Settings(
        silent=True,  # our own logging says what matters; W&B's banner would interleave with Hydra's
        console="off",  # no stdout/stderr capture thread to hang on at exit
        init_timeout=timeout_s,
        x_service_wait=timeout_s,
        login_timeout=timeout_s,
        finish_timeout=float(logger_cfg.finish_timeout_s),
        # Without these, an unreachable server is retried for minutes at each request.
        x_graphql_retry_max=2,
        x_graphql_timeout_seconds=max(1.0, timeout_s / 3),
        x_file_stream_retry_max=3,
        x_file_stream_timeout_seconds=max(1.0, timeout_s / 3),
    )
    # wandb reads the environment once per process (wandb.setup); a later job of a multirun must see changes too.
    for env_var, key in (("WANDB_BASE_URL", "base_url"), ("WANDB_API_KEY", "api_key")):
        if os.environ.get(env_var):
            setattr(settings, key, os.environ[env_var])
    sweep_id = hydra_sweep_id()
    tags = list(logger_cfg.tags) + ([f"sweep:{sweep_id}"] if sweep_id else [])
    return wandb.init(
        project=logger_cfg.project,
        entity=logger_cfg.entity,
        group=logger_cfg.group or sweep_id,
        tags=tags,
        name=logger_cfg.name or run_dir.name,
        job_type=logger_cfg.job_type,
        config=config,
        dir=str(run_dir),
        mode=mode,
        reinit="finish_previous",  # multirun jobs share one process: never log into the previous job's run
        id=run_id,
        resume="allow" if run_id else None,  # a resumed run continues its W&B run rather than starting a second
        settings=settings,
    )


def saved_wandb_id(run_dir: Path) -> str | None:
    """The W&B run id this run directory was logged under (written at the first start), if any."""
    path = run_dir / WANDB_ID_FILE
    return (path.read_text().strip() or None) if path.is_file() else None


def define_step_axes(run: Any) -> None:
    """Draw watch/, guard/ and keep/ against `watch/step` (the training step they were scored at), so that one W&B
    panel over a sweep's runs shows every run's curve on the same axis; a failure costs the axis, not the run."""
    try:
        run.define_metric("watch/step")
        for prefix in ("watch", "guard", "keep"):
            run.define_metric(f"{prefix}/*", step_metric="watch/step")
    except Exception as err:  # an old wandb, a broken run: the series are still logged against W&B's own step
        log.warning("W&B define_metric failed (%s: %s); watch/* is drawn against W&B's step", type(err).__name__, err)


def start_wandb(logger_cfg: LoggerConfig, config: dict, run_dir: Path, resume: bool = False) -> Any:
    """A W&B run (the run dir's earlier one when `resume`), falling back online -> offline -> None; never raises."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        log.warning("logger.backend=wandb but wandb is not installed; logging to local files only.")
        return None
    modes = [wandb_mode(logger_cfg)]
    if modes[0] == "online":
        modes.append("offline")
    for mode in modes:
        start_s = time.monotonic()
        try:
            run = init_wandb(logger_cfg, config, run_dir, mode, saved_wandb_id(run_dir) if resume else None)
        except Exception as err:  # wandb raises CommError, UsageError, TimeoutError... none may stop training
            log.warning(
                "W&B init (%s) failed after %.1f s (%s: %s).",
                mode,
                time.monotonic() - start_s,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
            continue
        log.info("W&B run %s (%s, id %s) in %s", run.name, mode, run.id, run.dir)
        define_step_axes(run)
        (run_dir / WANDB_ID_FILE).write_text(f"{run.id}\n")
        return run
    log.warning("W&B is unavailable; logging to %s (metrics.jsonl, summary.json) only.", run_dir)
    return None
