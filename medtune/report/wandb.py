"""Publish a sweep report to W&B: its plots and tables as one run (job_type=report) in the sweep's group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.config import LoggerConfig
from medtune.runtime import wandb_run
from medtune.runtime.tracking import Tracker


def publish_wandb(rep: Any, sweep_dir: Path, out_dir: Path, init_timeout_s: float = 30.0) -> bool:
    """Log the report's plots and tables as one W&B run (job_type=report) in the sweep's group; False offline."""
    if not wandb_run.wandb_api_key_present():
        print("--wandb: no W&B key (WANDB_API_KEY or `wandb login`): skipped; the local report is complete.")
        return False
    runs = rep.runs
    project = runs["wandb_project"].dropna().mode()
    group = runs["wandb_group"].dropna().mode()
    cfg = LoggerConfig(
        backend="wandb", mode="online", job_type="report", name=f"report-{Path(sweep_dir).name}",
        init_timeout_s=init_timeout_s,
        project=str(project.iloc[0]) if len(project) else "medtune",
        group=str(group.iloc[0]) if len(group) else Path(sweep_dir).name,
    )  # fmt: skip
    run_dir = out_dir / "wandb_report"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # online or nothing: an offline copy of a report is of no use
        run = wandb_run.init_wandb(cfg, {"sweep_dir": str(sweep_dir)}, run_dir, "online")
    except Exception as err:  # any W&B failure: the local report is already written
        print(f"--wandb: W&B is unreachable: skipped; the local report is complete ({type(err).__name__}).")
        return False
    tracker = Tracker(run_dir, "wandb", run)
    tracker.log_images({p.stem: p for p in sorted(out_dir.glob("*.png"))})
    frames = {"forgetting": rep.forgetting, "efficiency": rep.efficiency}
    for name, frame in (("contrast", rep.contrast), ("watch_curves", rep.watch), ("watch_guard", rep.guard)):
        if not frame.empty:
            frames[name] = frame
    for name, frame in frames.items():
        tracker.log_table(name, [str(c) for c in frame.columns], frame.astype(object).values.tolist())
    cols = [c for c in runs.columns if c in ("run", "ratio", "en_share", "seed", "status") or c.startswith("eval/lang")]
    tracker.log_table("runs", cols, runs[cols].astype(object).where(runs[cols].notna(), None).values.tolist())
    url = getattr(run, "url", None)
    tracker.finish()
    print(f"--wandb: report run {url} (group {cfg.group}): its panels compare the sweep's runs.")
    return True
