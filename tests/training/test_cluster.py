"""Past one host: the shipped SLURM launcher config composes, a sweep through submitit's local executor runs each job
in a process of its own and the exit status still counts the failed ones, and the multi-node sbatch recipe parses.

Every subprocess has a timeout; submitit's jobs have hydra.launcher.timeout_min."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher", reason="needs the cluster extra: pip install -e .[cluster]"
)

TINY = ["model=tiny_llama", "trainer.device=cpu", "trainer.progress_bar=false", "packing.max_seq_len=1024"]
SBATCH = REPO / "experiments" / "cluster" / "train_multinode.sbatch"


def _train(*args: str, cache: Path | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"MEDTUNE_CACHE_DIR": str(cache)} if cache else {})}
    cmd = [sys.executable, "-m", "medtune.train", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


def test_slurm_launcher_config_is_found_in_medtunes_conf() -> None:
    """medtune/conf/hydra/launcher/slurm.yaml extends the plugin's submitit_slurm with its own defaults."""
    proc = _train(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", "--package", "hydra.launcher"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    launcher = yaml.safe_load(proc.stdout)  # the hydra.launcher node alone
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] == 720
    assert launcher["gpus_per_node"] == 1 and launcher["tasks_per_node"] == 1 and launcher["nodes"] == 1


@pytest.mark.timeout(700)
def test_submitit_local_sweep_records_both_jobs_and_counts_the_failure(tmp_path: Path) -> None:
    """Job 0 trains, job 1 has an invalid learning rate: both write summary.json in their own process, and the
    submitting process, which ran neither, exits 1 and names the failed job."""
    sweep = tmp_path / "sweep"
    proc = _train(
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=8", *TINY, "eval=none", "logger=jsonl",
        "trainer.max_steps=2", "optim.lr=3e-3,-1", f"hydra.sweep.dir={sweep}", cache=tmp_path / "cache", timeout_s=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "sweep: 1 of 2 jobs failed: #1 optim.lr=-1." in out
    jobs = {int(p.parent.name.split("_")[0]): json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert sorted(jobs) == [0, 1]
    assert jobs[0]["run/status"] == "ok" and jobs[0]["train/loss"] > 0
    assert jobs[1]["run/status"] == "failed" and jobs[1]["run/error"] == "ConfigError: optim.lr=-1.0 must be > 0."
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2  # each job ran under submitit, not in-process
    assert (next(sweep.glob("0_*")) / "adapter" / "adapter_model.safetensors").is_file()


def test_multinode_sbatch_recipe_parses_and_is_documented() -> None:
    proc = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    text = SBATCH.read_text()
    for flag in ("--nnodes", "--rdzv-backend c10d", "--rdzv-endpoint", "--rdzv-id", "srun", "-m medtune.train"):
        assert flag in text, flag
    assert "experiments/cluster/train_multinode.sbatch" in (REPO / "README.md").read_text()
