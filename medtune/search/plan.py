"""The proxy runs of a search: one job per share x seed, each `python -m medtune.train` in its own run directory.

    jobs = plan_jobs(search_cfg, train_cfg, overrides, search_dir)      # Job(name, share, seed, run_dir, argv)
    ran = run_jobs(jobs, search_dir / "logs", timeout_s, parallel=2)    # those that ran now; finished ones skipped

A job is finished when its summary.json says `run/status: ok`; anything else (no summary, a failed one, a run
stopped mid-way) runs again, in the same directory, so a killed search continues where it stopped. A job that fails
is recorded (its log under logs/, its summary.json) and the search goes on; `parallel` jobs run at a time, each in
its own process. `plan.json` holds what every run of the search shares (the training overrides, the varied
language, the steps): a second invocation with other values would mix unlike runs, so it is refused; more shares or
seeds only add runs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.config import ConfigError, TrainConfig
from medtune.config.search import SearchConfig
from medtune.files.atomic import atomic_write_text

log = logging.getLogger("medtune.search")
PLAN_FILE = "plan.json"


@dataclass
class Job:
    """One proxy (or confirming) run."""

    name: str
    share: float  # of the varied language, as asked
    seed: int
    run_dir: Path
    argv: list[str]  # medtune.train's overrides


def mix_ratio(weights: dict[str, float], vary: str, share: float) -> str:
    """data_mix.ratio giving `vary` this share; the other languages keep their proportions: 'en:ko:ja=0.3:0.2:0.5'."""
    if vary not in weights:
        raise ConfigError(f"search.vary={vary!r} is not a language of the data mix ({sorted(weights)}); name one.")
    others = {lang: w for lang, w in weights.items() if lang != vary}
    total = sum(others.values())
    if total <= 0:
        raise ConfigError(
            f"search.vary={vary}: the mix's other languages {sorted(others)} all weigh 0, so no share of {vary} "
            "leaves room for them; give them a weight in data_mix.weights (or data_mix.ratio)."
        )
    shares = {lang: (1 - share) * w / total for lang, w in others.items()} | {vary: share}
    langs = list(weights)
    return ":".join(langs) + "=" + ":".join(f"{shares[lang]:.6g}" for lang in langs)


def job_name(vary: str, share: float, seed: int) -> str:
    """A run directory's name: ja0.300_seed1."""
    return f"{vary}{share:.3f}_seed{seed}"


def plan_jobs(scfg: SearchConfig, cfg: TrainConfig, overrides: list[str], search_dir: Path) -> list[Job]:
    """Every proxy run of the search, shares outer, seeds inner."""
    jobs = []
    for share in scfg.shares:
        ratio = mix_ratio(cfg.data_mix.weights, str(scfg.vary), share)
        for seed in scfg.seeds:
            name = job_name(str(scfg.vary), share, seed)
            run_dir = search_dir / "runs" / name
            argv = [*overrides, f"data_mix.ratio='{ratio}'", f"seed={seed}", f"trainer.max_steps={scfg.steps}"]
            jobs.append(Job(name, share, seed, run_dir, [*argv, *run_overrides(run_dir, name)]))
    return jobs


def confirm_job(scfg: SearchConfig, cfg: TrainConfig, overrides: list[str], search_dir: Path, share: float) -> Job:
    """The confirming run: the recommended share, the first seed, the config's own trainer.max_steps."""
    ratio = mix_ratio(cfg.data_mix.weights, str(scfg.vary), share)
    name = "confirm_" + job_name(str(scfg.vary), share, scfg.seeds[0])
    run_dir = search_dir / "confirm" / name
    argv = [*overrides, f"data_mix.ratio='{ratio}'", f"seed={scfg.seeds[0]}", *run_overrides(run_dir, name)]
    return Job(name, share, scfg.seeds[0], run_dir, argv)


def run_overrides(run_dir: Path, name: str) -> list[str]:
    """Where a job writes, and the eval stage it needs (the base comparison gives the paired change)."""
    quoted = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
    return [f"hydra.run.dir='{quoted}'", f"run_name=search_{name}", "eval.enabled=true", "eval.compare_base=true"]


def check_plan(search_dir: Path, scfg: SearchConfig, overrides: list[str]) -> None:
    """Write plan.json, or check that the one there describes the same runs; ConfigError names what differs."""
    plan = {"train": overrides, "vary": scfg.vary, "steps": scfg.steps}
    path = search_dir / PLAN_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        differ = [k for k in plan if old.get(k) != plan[k]]
        if differ:
            k = differ[0]
            raise ConfigError(
                f"{path}: this search ran with {k}={old.get(k)!r}, now {plan[k]!r}; its runs would not compare. "
                "Give another search.dir, or delete the folder to start again."
            )
        return
    search_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan, indent=1) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's summary.json, or None when absent or unreadable (a run killed while writing it)."""
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finished(run_dir: Path) -> bool:
    """The run's summary.json says status ok."""
    summary = read_summary(run_dir)
    return summary is not None and summary.get("run/status") == "ok"


Runner = Callable[[Job, Path, float | None], int]


def subprocess_runner(job: Job, log_path: Path, timeout_s: float | None) -> int:
    """`python -m medtune.train <overrides>` with its output in `log_path`; the exit status (124: timed out)."""
    cmd = [sys.executable, "-m", "medtune.train", *job.argv]
    env = {**os.environ, "MEDTUNE_RUN_STAMP": job.name}
    with log_path.open("w", encoding="utf-8") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        try:
            return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\nstopped after {timeout_s} s (search.job_timeout_s)\n")
            return 124


def run_jobs(
    jobs: list[Job], log_dir: Path, timeout_s: float | None, runner: Runner = subprocess_runner, parallel: int = 1
) -> list[str]:
    """Run every job not finished yet, `parallel` at a time; the names of those run now. Failures are logged."""
    log_dir.mkdir(parents=True, exist_ok=True)
    todo = [job for job in jobs if not finished(job.run_dir)]
    if len(todo) < len(jobs):
        log.info("search: %d of %d runs finished before, skipped", len(jobs) - len(todo), len(jobs))

    def one(i: int, job: Job) -> None:
        log.info("search: run %d of %d: %s", i, len(todo), job.name)
        status = runner(job, log_dir / f"{job.name}.log", timeout_s)
        if status != 0 or not finished(job.run_dir):
            summary = read_summary(job.run_dir) or {}
            why = summary.get("run/error") or f"exit status {status}"
            log.error("search: run %s failed (%s); see %s", job.name, why, log_dir / f"{job.name}.log")

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(todo) or 1))) as pool:
        for done in [pool.submit(one, i, job) for i, job in enumerate(todo, 1)]:
            done.result()  # a runner's own exception (not a failed run) stops the search
    return [job.name for job in todo]
