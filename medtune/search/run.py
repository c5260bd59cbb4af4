"""One share search from start to end: check, run the proxies (finished ones skipped), fit, write, confirm.

    result = search(search_cfg, train_overrides, name="ratio_ja")    # writes <search dir>/search.md, search.png

The training overrides are composed and checked first (the config every proxy run starts from), as are the target
and protected groups against its eval tasks, so a typo stops the search before any run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtune.config import TrainConfig, compose
from medtune.config.search import SearchConfig
from medtune.files.atomic import atomic_write_text
from medtune.search.fit import Curve, Recommendation, fit_response, recommend
from medtune.search.plan import (
    Job,
    Runner,
    check_plan,
    confirm_job,
    finished,
    mix_ratio,
    plan_jobs,
    read_summary,
    run_jobs,
    subprocess_runner,
)
from medtune.search.scores import Changes, align, check_groups, run_changes
from medtune.search.write import plot_search, search_markdown

log = logging.getLogger("medtune.search")
TARGET = "target"  # the pooled questions of every target set


class SearchError(RuntimeError):
    """The search cannot give an answer (too few finished runs); the message says what to do."""


@dataclass
class Result:
    """What search.md is written from."""

    scfg: SearchConfig
    overrides: list[str]
    weights: dict[str, float]
    jobs: list[Job]
    ran: list[str]
    failed: dict[str, str]
    n_ok: int
    grid: np.ndarray
    degree: int
    curves: dict[str, Curve]
    rec: Recommendation
    by_share: list[dict[str, Any]]
    confirmed: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)

    def ratio_at(self, share: float) -> str:
        """The data_mix.ratio of a share of the varied language."""
        return mix_ratio(self.weights, str(self.scfg.vary), share)


def search_dir_of(scfg: SearchConfig, name: str) -> Path:
    """search.dir, else $MEDTUNE_RUNS_DIR (or runs)/search/<name>: no timestamp, so a second call resumes."""
    return Path(scfg.dir) if scfg.dir else Path(os.environ.get("MEDTUNE_RUNS_DIR", "runs")) / "search" / name


def search(scfg: SearchConfig, overrides: list[str], name: str, runner: Runner = subprocess_runner) -> Result:
    """Run (or continue) the search and write search.md (+ search.png); see the module docstring."""
    scfg.require_plan()
    overrides = [*scfg.train, *overrides]
    cfg = compose(overrides)
    groups = check_groups(scfg, cfg)
    out = search_dir_of(scfg, name)
    check_plan(out, scfg, overrides)
    jobs = plan_jobs(scfg, cfg, overrides, out)
    ran = run_jobs(jobs, out / "logs", scfg.job_timeout_s, runner, scfg.parallel)
    result = analyse(scfg, cfg, overrides, jobs, ran, groups, out)
    if scfg.confirm:
        result.confirmed = confirm(scfg, cfg, overrides, result, groups, out, runner)
    atomic_write_text(out / "search.md", search_markdown(result))
    result.files = [out / "search.md", *filter(None, [plot_search(result, out / "search.png")])]
    atomic_write_text(out / "search.json", json.dumps(_record(result), indent=1) + "\n")
    log.info("search: %s", out / "search.md")
    return result


def _collect(jobs: list[Job], groups: list[str], vary: str, unit: str) -> tuple[list, dict[str, str]]:
    """(finished jobs with their changes and trained share, {failed job: why})."""
    done, failed = [], {}
    for job in jobs:
        summary = read_summary(job.run_dir) or {}
        if not finished(job.run_dir):
            failed[job.name] = str(summary.get("run/error") or "no summary.json (the run did not finish)")
            continue
        try:
            changes = run_changes(job.run_dir, groups)
        except ValueError as err:
            failed[job.name] = str(err)
            continue
        trained = summary.get(f"trained_mix/{vary}/share_{unit}", float("nan"))
        done.append((job, changes, float(trained)))
    return done, failed


def _pooled(tables: list[Changes], groups: list[str], metric: str) -> np.ndarray:
    return np.hstack([align(tables, g, metric) for g in groups])


def analyse(
    scfg: SearchConfig, cfg: TrainConfig, overrides: list[str], jobs: list[Job], ran: list[str], groups: list[str],
    out: Path,
) -> Result:  # fmt: skip
    """Fit every group's response and the pooled target's; recommend; the per-share table."""
    done, failed = _collect(jobs, groups, str(scfg.vary), cfg.data_mix.unit)
    shares = np.array([job.share for job, _, _ in done])
    if len(np.unique(shares)) < 2:
        raise SearchError(
            f"only {len(np.unique(shares))} share(s) have a finished run ({len(failed)} runs failed: see "
            f"{out / 'logs'}); fix the cause and run the same command again (finished runs are kept)."
        )
    tables = [changes for _, changes, _ in done]
    grid = np.linspace(shares.min(), shares.max(), scfg.grid_points)
    fit_args = (scfg.degree, grid, scfg.bootstrap_samples, scfg.seed)
    curves = {g: fit_response(shares, align(tables, g, scfg.metric), *fit_args) for g in groups}
    target = curves[scfg.target[0]] if len(scfg.target) == 1 else None
    target = target or fit_response(shares, _pooled(tables, scfg.target, scfg.metric), *fit_args)
    rec = recommend(grid, target, {g: curves[g] for g in scfg.protect}, scfg.margin, scfg.level)
    by_share = []
    for share in np.unique(shares):
        rows = [i for i, s in enumerate(shares) if s == share]
        means = {g: {m: float(np.mean([align([tables[i]], g, m).mean() for i in rows])) for m in ("gold_ll", "acc")}
                 for g in groups}  # fmt: skip
        pooled = float(np.mean([_pooled([tables[i]], scfg.target, scfg.metric).mean() for i in rows]))
        worst = min(means[g][scfg.metric] for g in scfg.protect)
        trained = (
            float(np.nanmean([done[i][2] for i in rows]))
            if any(np.isfinite(done[i][2]) for i in rows)
            else float("nan")
        )
        by_share.append({"share": float(share), "n": len(rows), "trained_share": trained, "means": means,
                         "target": pooled, "protect": worst})  # fmt: skip
    degree = min(scfg.degree, len(np.unique(shares)) - 1)
    return Result(scfg, overrides, dict(cfg.data_mix.weights), jobs, ran, failed, len(done), grid, degree, curves,
                  rec, by_share)  # fmt: skip


def confirm(
    scfg: SearchConfig, cfg: TrainConfig, overrides: list[str], result: Result, groups: list[str], out: Path,
    runner: Runner,
) -> dict[str, Any] | None:  # fmt: skip
    """Train once at the recommended share with the config's steps; per group, predicted vs measured (with CI)."""
    if result.rec.share is None:
        log.warning("search: no safe share, so no confirming run")
        return None
    job = confirm_job(scfg, cfg, overrides, out, result.rec.share)
    run_jobs([job], out / "logs", None, runner)
    record: dict[str, Any] = {
        "name": job.name,
        "steps": cfg.trainer.max_steps,
        "log": str(out / "logs" / f"{job.name}.log"),
    }
    if not finished(job.run_dir):
        return record | {"status": "failed", "error": (read_summary(job.run_dir) or {}).get("run/error", "")}
    changes = run_changes(job.run_dir, groups)
    at, rng = result.rec.index, np.random.default_rng(scfg.seed)
    measured = {}
    for group in [*scfg.target, *scfg.protect]:
        deltas = align([changes], group, scfg.metric)[0]
        boot = [deltas[rng.integers(0, len(deltas), len(deltas))].mean() for _ in range(scfg.bootstrap_samples)]
        tail = 100 * (1 - scfg.level) / 2
        low, high = np.percentile(boot, [tail, 100 - tail])
        measured[group] = (float(result.curves[group].point[at]), float(deltas.mean()), float(low), float(high))
    return record | {"status": "ok", "groups": measured}


def _record(result: Result) -> dict[str, Any]:
    """search.json: what ran now, what failed, the recommendation (machine-readable beside search.md)."""
    rec = result.rec
    return {
        "ran": result.ran,
        "failed": result.failed,
        "finished": result.n_ok,
        "recommended_share": rec.share,
        "recommended_ratio": None if rec.share is None else result.ratio_at(rec.share),
        "closest_share": rec.closest_share,
        "needed_margin": rec.needed_margin,
        "target": rec.target,
        "protect": rec.protect,
        "by_share": result.by_share,
        "confirmed": result.confirmed,
    }
