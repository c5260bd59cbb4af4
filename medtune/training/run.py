"""One run of `python -m medtune.train`: set up, train, hold-out loss, adapter, eval stage; summary.json at the end.

    summary = run(cfg, dict_cfg, run_dir, multirun=False)

In a sweep a failure is recorded in the job's summary.json, not raised. Under torchrun a watchdog stops every rank
when one stalls (a collective nobody else joins) or when the launcher stops the job, and rank 0 records where. In one
process SIGTERM or SIGINT ends the run after the step in progress, with a checkpoint and `run/status: terminated`
(`RunTerminated` is raised, in a sweep too: the sweep stops). The final record is written into the room reserved
for it at the start (space.reserve), so a disk that filled mid-run still gets its summary.json.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from medtune.config import ConfigError, TrainConfig
from medtune.eval.sanity import EvalSanityError
from medtune.files import space
from medtune.runtime import lifecycle, run_record
from medtune.runtime.process_group import DistInfo
from medtune.runtime.watchdog import RunTerminated, Watchdog
from medtune.training import fast_paths
from medtune.training.checkpoint import resume
from medtune.training.checkpoint.resume import ResumePlan
from medtune.training.eval_stage import run_eval_stage
from medtune.training.recipe import TrainRecipe
from medtune.training.trained_mix import log_trained, trained_record

log = logging.getLogger("medtune.train")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(cfg: TrainConfig, dict_cfg: DictConfig, run_dir: Path, multirun: bool) -> dict[str, Any]:
    """Train and/or evaluate one configuration; write summary.json; in a sweep, a failure is recorded, not raised.

    Under torchrun a watchdog stops every rank when one stalls (a collective nobody else joins) or when the
    launcher stops the job, and rank 0 records where in summary.json (`run/failed_phase`, `run/failed_step`).
    """
    with lifecycle.session(cfg.sharding, cfg.trainer.device) as (dist, watchdog):
        return _run(cfg, dict_cfg, run_dir, multirun, dist, watchdog)


def _open(
    cfg: TrainConfig, dict_cfg: DictConfig, run_dir: Path, dist: DistInfo
) -> tuple[TrainConfig, Any, dict[str, Any], dict[str, Any], ResumePlan | None]:
    """Settle every `auto` for this machine, check the resume target (a mismatch stops here: nothing loaded,
    nothing written), keep the record and start the tracker; returns the settled config, the tracker, the summary's
    first keys, what each checkpoint of the run stores and the resume plan (None: a fresh start)."""
    # every `auto` (kernels, RMSNorm, rows, recomputation, offloading) decided for this machine, before loading
    cfg, fitted = fast_paths.settle(cfg, dist)
    fast_paths.record_settled(dict_cfg, cfg)  # config.yaml and resume's check see the kernels that run, not "auto"
    if "trainer/micro_batch_size_auto" in fitted:
        log.info(
            "trainer.micro_batch_size=auto: %d rows, predicted peak %.2f GiB per GPU within the %.2f GiB budget",
            fitted["trainer/micro_batch_size_auto"],
            fitted["trainer/predicted_peak_gib"],
            fitted["trainer/memory_budget_gib"],
        )
    plan = resume.plan_resume(cfg, run_dir, dist.world_size)
    tracker = run_record.open_record(cfg, dict_cfg, run_dir, dist, plan.step if plan else None)
    record = resume.checkpoint_record(resume.run_identity(cfg, dist.world_size), plan)
    return cfg, tracker, {"run/status": "failed", **(plan.summary() if plan else {}), **fitted}, record, plan


def _run(
    cfg: TrainConfig, dict_cfg: DictConfig, run_dir: Path, multirun: bool, dist: DistInfo, watchdog: Watchdog
) -> dict[str, Any]:
    cfg, tracker, summary, record, plan = _open(cfg, dict_cfg, run_dir, dist)
    seed_everything(cfg.seed)  # same seed on every rank: random-init base weights must agree under FSDP
    started = time.perf_counter()
    record_lock = threading.Lock()  # the watchdog's thread and this one never write the record together

    def record_failure(message: str, phase: str, step: int | None) -> None:  # the watchdog's thread; exits next
        with record_lock:
            failed = {"run/error": message, "run/failed_phase": phase, "run/failed_step": step}
            if watchdog.signalled and dist.world_size == 1:  # under torchrun a SIGTERM mostly means a rank failed
                failed["run/status"] = "terminated"
            space.release_reserve(run_dir if dist.is_main else None)
            tracker.summary(summary | failed | {"run/wall_s": time.perf_counter() - started})

    watchdog.on_failure = record_failure
    watchdog.start(timer=dist.world_size > 1, graceful=dist.world_size == 1)  # one process cannot stall on a peer
    try:
        _run_stages(cfg, run_dir, tracker, dist, watchdog, summary, record, plan)
        summary["run/status"] = "ok"
    except RunTerminated as err:
        log.warning("%s", err)
        summary.update({"run/status": "terminated", "run/error": str(err)})
        summary["run/failed_phase"], summary["run/failed_step"] = watchdog.phase, watchdog.step
        raise  # in a sweep too: the scheduler wants the whole process gone
    except Exception as err:
        space.release_reserve(run_dir if dist.is_main else None)  # a full disk: room for the log line and the record
        _note_failure(err, watchdog, summary, multirun)
        if not multirun:
            raise
    finally:
        watchdog.stop()
        with record_lock:
            if not watchdog.fired:  # else the watchdog wrote this rank's record and is ending the process
                summary["run/wall_s"] = time.perf_counter() - started
                space.release_reserve(run_dir if dist.is_main else None)
                _close_record(tracker, summary)
    return summary  # the session leaves the process group


def _note_failure(err: Exception, watchdog: Watchdog, summary: dict[str, Any], multirun: bool) -> None:
    """Put the error in the summary and the log: one line for a full or unwritable disk, a failed evaluation sanity
    check or bad input (a single run's entry point says that one itself), else with the traceback."""
    disk = space.explain(err)
    summary["run/error"] = f"{type(err).__name__} in {watchdog.where()}: {disk or err}"
    summary["run/failed_phase"], summary["run/failed_step"] = watchdog.phase, watchdog.step
    if isinstance(err, ConfigError):  # e.g. a resume onto changed data: found once the data is loaded
        if multirun:
            log.error("run stopped in %s: %s", watchdog.where(), err)
        log.debug("traceback of the refusal", exc_info=err)
    elif isinstance(err, EvalSanityError):  # the message names the task and the fix; the stack adds nothing
        log.error("run failed in %s: %s", watchdog.where(), err)
        log.debug("traceback of the failed check", exc_info=err)
    elif disk:  # the zip writer's chained errors say nothing the line does not; kept for --verbose / debug logs
        log.error("run failed in %s: %s", watchdog.where(), disk)
        log.debug("traceback of the failed write", exc_info=err)
    else:
        log.error("run failed in %s: %s\n%s", watchdog.where(), err, traceback.format_exc())


def _close_record(tracker: Any, summary: dict[str, Any]) -> None:
    """Write the final summary.json; a disk that is still full costs the record, not a second traceback."""
    try:
        tracker.summary(summary)
        tracker.finish(exit_code=0 if summary["run/status"] == "ok" else 1)
    except OSError as err:
        log.error("summary.json not written: %s", space.explain(err) or err)


def _run_stages(
    cfg: TrainConfig,
    run_dir: Path,
    tracker: Any,
    dist: DistInfo,
    watchdog: Watchdog,
    summary: dict,
    record: dict[str, Any],
    plan: ResumePlan | None,
) -> None:
    """Setup, training, final held-out loss and adapter, then the eval stage; fills `summary` as it goes."""
    recipe = TrainRecipe(cfg, run_dir, tracker, dist, watchdog)
    recipe.checkpoint_record = record
    recipe.resume_from = plan.checkpoint if plan else None  # load what the record says it resumed from
    recipe.resume_plan = plan
    recipe.setup()
    summary.update(recipe.summary)
    if recipe.step == 0:  # a resumed run logged its data report when it started
        tracker.log(recipe.data.report, step=0)
    if cfg.stage in ("train", "train_eval"):
        summary.update(recipe.train())
        trained = trained_record(recipe.data, recipe.data_position, recipe.data.report)  # what the loop consumed
        if dist.is_main:
            log_trained(trained, recipe.data.report, cfg.data_mix.weights, cfg.trainer.max_steps)
        summary.update(trained)
        final_eval = recipe.eval_loss()
        tracker.log(final_eval, step=recipe.step)
        summary.update(final_eval)
        summary["run/adapter_dir"] = str(recipe.save_adapter())
    if cfg.stage in ("eval", "train_eval") and cfg.eval.enabled:
        recipe.release_optimizer()  # its state is not needed to score; lm-eval's logits want the memory
        watchdog.enter("eval", recipe.step)
        summary.update(run_eval_stage(cfg, recipe.model, recipe.tokenizer, run_dir, tracker, dist, watchdog.tick))
