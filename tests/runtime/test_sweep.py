"""A multirun survives bad jobs: each failure is that job's summary.json, the others run, the exit status counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

TINY = ["model=tiny_llama", "trainer.device=cpu", "trainer.progress_bar=false", "packing.max_seq_len=1024"]


def _sweep(sweep_dir: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "medtune.train", "-m", *TINY, "eval=none", "logger=jsonl", *overrides]
    env = {**os.environ, "MEDTUNE_CACHE_DIR": str(cache)}
    cmd.append(f"hydra.sweep.dir={sweep_dir}")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _summaries(sweep_dir: Path) -> dict[int, dict]:
    return {int(p.parent.name.split("_")[0]): json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}


def test_invalid_middle_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, tmp_path / "cache", "trainer.max_steps=2", "data_mix.ratio=1:1,10-3-1,3:1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]  # one job failed
    jobs = _summaries(sweep)
    assert sorted(jobs) == [0, 1, 2]
    assert jobs[0]["run/status"] == "ok" and jobs[2]["run/status"] == "ok"
    assert round(jobs[2]["data_mix/en/share_examples"], 2) == 0.75  # the job after the bad one ran as asked
    bad = jobs[1]
    assert bad["run/status"] == "failed" and bad["run/failed_phase"] == "config"
    assert bad["run/error"].startswith("ConfigError: data_mix.ratio='10-3-1' is not of the form")
    assert "data_mix.ratio=10-3-1" in bad["run/overrides"].split()
    assert "sweep: 1 of 3 jobs failed: #1 data_mix.ratio=10-3-1." in out
    assert "Traceback" not in out

    from medtune.report.cli import main as report_main

    assert report_main([str(sweep), "--out", str(tmp_path / "report")]) == 0  # the bad job's mix does not stop it
    assert "3 runs, 1 failed" in (tmp_path / "report" / "report.md").read_text()


def test_exit_status_is_the_number_of_failed_jobs(tmp_path: Path) -> None:
    """Two invalid learning rates: both jobs recorded (nothing loads), exit status 2."""
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, tmp_path / "cache", "optim.lr=-1,-0.5")
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    jobs = _summaries(sweep)
    assert [jobs[i]["run/error"] for i in (0, 1)] == [
        "ConfigError: optim.lr=-1.0 must be > 0.",
        "ConfigError: optim.lr=-0.5 must be > 0.",
    ]
    assert "sweep: 2 of 2 jobs failed: #0 optim.lr=-1; #1 optim.lr=-0.5." in proc.stdout + proc.stderr


def test_jobs_of_another_launcher_are_read_from_their_records(tmp_path: Path) -> None:
    """hydra/launcher=slurm runs the jobs elsewhere: their outcomes come from the sweep directory, and a job that
    wrote no summary.json (killed at SLURM's time limit) counts as failed."""
    from medtune.runtime.sweep import read_jobs

    for num, summary in ((0, {"run/status": "ok"}), (1, None), (2, {"run/status": "failed", "run/error": "boom"})):
        job = tmp_path / f"{num}_seed={num}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n- model=tiny_llama\n")
        if summary is not None:
            (job / "summary.json").write_text(json.dumps(summary))
    (tmp_path / ".submitit").mkdir()  # not a job
    jobs = read_jobs(tmp_path)
    assert [(j.num, j.overrides) for j in jobs] == [(n, [f"seed={n}", "model=tiny_llama"]) for n in (0, 1, 2)]
    assert jobs[0].error is None and jobs[2].error == "boom" and jobs[1].error.startswith("no summary.json")
