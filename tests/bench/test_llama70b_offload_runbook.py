"""experiments/gpu/llama70b_offload.sh (issue 35 on one GPU): its 70B command lines compose, pass the preflight and
fit an 80 GB card by the estimator; its DRY=1 mode runs the same driver and collect on this CPU (tiny_llama), and the
collected table has every phase measured beside the estimator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, dict_config

from medtune.config import compose
from medtune.memory.cli import main as memory_main
from medtune.runtime.preflight import check_run

RUNBOOK = REPO / "experiments" / "gpu" / "llama70b_offload.sh"
VARIANTS = ("offload", "resident")


def _overrides(variant: str, **env: str) -> list[str]:
    """The runbook's own overrides for `variant` (`overrides` subcommand), so the test checks what the GPU runs."""
    proc = subprocess.run(
        ["bash", str(RUNBOOK), "overrides", variant],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=True,
    )
    return proc.stdout.split()


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_70b_command_composes_and_passes_the_preflight(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = _overrides(variant)
    assert {"model=llama3_3_70b", "quantization=nf4", "sharding=fsdp", "sharding.load=per_layer"} <= set(overrides)
    assert f"sharding.cpu_offload={'true' if variant == 'offload' else 'false'}" in overrides
    monkeypatch.setenv("WORLD_SIZE", "1")  # what `torchrun --nproc-per-node 1` sets
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    cfg = compose(overrides)
    assert cfg.sharding.cpu_offload is (variant == "offload") and cfg.model.init == "random"
    assert cfg.stage == "train_eval" and cfg.eval.enabled and cfg.trainer.eval_batches > 0  # all four phases run
    check_run(cfg, dict_config(overrides))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_estimator_puts_every_modelled_phase_under_80_gib(
    variant: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    memory_main([*_overrides(variant), "gpu_memory_gib=80", "--json"])
    out = json.loads(capsys.readouterr().out)
    phases = {k: out[k] for k in ("load_peak_gib", "peak_gib", "heldout_peak_gib")}
    assert all(0 < v < 80 for v in phases.values()), phases
    assert out["verdict"]["fits"], out["verdict"]
    if variant == "offload":  # the shards live in CPU memory: loading holds the quantisation state and the root
        state_gib = out["parts"]["weights/layers"] / 1024**3
        assert out["load_peak_gib"] == pytest.approx(state_gib + out["load_root_gib"], abs=0.01)
        assert out["load_root_gib"] > out["load_layer_gib"] and out["peak_gib"] < 10


@pytest.mark.slow
def test_the_dry_mode_runs_every_phase_and_collects_the_table(tmp_path: Path) -> None:
    """DRY=1: model=tiny_llama under torchrun (gloo, 1 rank) with the runbook's phases, then its collect."""
    env = {**os.environ, "DRY": "1", "OUT": str(tmp_path), "STEPS": "3", "HELDOUT": "2", "QUESTIONS": "4"}
    env.pop("WORLD_SIZE", None)
    start = subprocess.run(["bash", str(RUNBOOK), "start"], capture_output=True, text=True, timeout=120, env=env)
    assert start.returncode == 0, start.stderr[-2000:]
    runs, wait = tmp_path / "runs", ["bash", str(RUNBOOK), "wait", "400"]
    try:
        done = subprocess.run(wait, capture_output=True, text=True, timeout=480, env=env)
    finally:  # the driver outlives its call by design: a test that gives up ends its session (and nothing else)
        if not (runs / "ALL_DONE").exists():
            subprocess.run(["pkill", "-TERM", "-s", (runs / "driver.sid").read_text().strip()], timeout=30)
    assert "all done" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
    rc = (runs / "rc.txt").read_text()
    assert "resident rc=0" in rc, (runs / "resident.log").read_text()[-3000:]
    table = json.loads((tmp_path / "llama70b_offload.json").read_text())
    rows = {r["phase"]: r for r in table["resident"]["phases"]}
    assert list(rows) == ["load", "train", "held-out", "eval"]
    for phase, row in rows.items():  # a CPU has no allocator: the process RSS stands in, and says so
        assert row["measured_gib"] > 0 and row["measure"] == "cpu_rss_gib", (phase, row)
    for phase in ("load", "train", "held-out"):
        assert rows[phase]["predicted_gib"] > 0 and "error_pct" in rows[phase], rows[phase]
    assert rows["eval"]["predicted_gib"] is None and rows["eval"]["note"].startswith("not modelled")
    assert table["resident"]["status"] == "ok" and table["resident"]["steps_logged"] == 3
    assert table["resident"]["useful_tokens_per_s_warm"] > 0
    markdown = (tmp_path / "llama70b_offload.md").read_text()
    assert markdown.count("| resident |") == 5  # four phases and the throughput row
    assert (tmp_path / "resident.log.gz").is_file() and (tmp_path / "resident.predict.json").is_file()


def test_wait_on_a_machine_without_runs_says_so_at_once(tmp_path: Path) -> None:
    """A machine given back between calls has no runs: `wait` exits 1 at once instead of sleeping out its call."""
    env = {**os.environ, "DRY": "1", "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(RUNBOOK), "wait", "500"], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 1 and "start again" in proc.stderr


def test_the_table_marks_missing_runs_and_predictions(tmp_path: Path) -> None:
    """A run that left no summary and an estimate that failed: the table says so instead of failing."""
    (tmp_path / "offload.predict.json").write_text("error: not JSON\n")
    script = REPO / "experiments" / "gpu" / "llama70b_offload_table.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(tmp_path / "out"), "offload"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "out" / "llama70b_offload.json").read_text())["offload"]
    assert res["status"].startswith("no summary")
    assert [r["measure"] for r in res["phases"]] == ["missing"] * 4
    assert res["phases"][0]["note"] == "the estimator's JSON has no load_peak_gib"
