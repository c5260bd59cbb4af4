"""Two torchrun "nodes" on this machine (`--nnodes 2 --nproc-per-node 1`, c10d rendezvous, gloo): the run equals the
one-node 2-rank run. On node 1 RANK=1 but LOCAL_RANK=0, so a check of the local rank where the global one is meant
(the run stamp, the run-dir lock, the record, the metrics) shows up as a second writer or a second run directory.

Every process has a timeout; on any failure both nodes' process groups are killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

# as tests/training/test_distributed.py runs its 2-rank cases: fp32 on the CPU, no dropout, a constant rate
COMMON = ["model=tiny_llama", "trainer.device=cpu", "logger=jsonl", "eval=none", "trainer.log_every=1"]
COMMON += ["packing.max_seq_len=1024", "trainer.progress_bar=false", "lora.dropout=0", "optim.lr=3e-3"]
COMMON += ["optim.schedule=constant", "optim.warmup_ratio=0", "sharding.param_dtype=float32"]
RUN = [*COMMON, "sharding=fsdp", "trainer.max_steps=3", "trainer.micro_batch_size=2", "run_name=nodes"]
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(cache: Path, runs: Path) -> dict:
    """The ranks pick their run stamp themselves: one left in this process's environment by an earlier test's
    compose() ("compose") would name the run directory for them (runs/compose_nodes) and hide what is tested."""
    env = {k: v for k, v in os.environ.items() if k != "MEDTUNE_RUN_STAMP"}
    return {**env, "MEDTUNE_CACHE_DIR": str(cache), "MEDTUNE_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1"}


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its worker: each node runs in a session of its own
            proc.wait(timeout=30)


def _wait(procs: list[subprocess.Popen]) -> None:
    """Until every node is done, or one has failed (the other would wait for it until its own timeout)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        codes = [proc.poll() for proc in procs]
        if all(code is not None for code in codes) or any(code not in (None, 0) for code in codes):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the two nodes did not finish in {TIMEOUT_S} s")


def _two_nodes(tmp: Path, cache: Path, runs: Path) -> list[str]:
    """Start node 0 and node 1 as two torchrun agents meeting at one c10d endpoint; their logs, in node order."""
    endpoint = f"127.0.0.1:{_free_port()}"
    procs, logs = [], [tmp / f"node{n}.log" for n in (0, 1)]
    try:
        for node in (0, 1):
            launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node), "--rdzv-backend", "c10d"]
            launcher += [
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "medtune-nodes",
                "--rdzv-conf",
                f"is_host={node == 0}",
            ]
            cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "medtune.train", *RUN]
            with logs[node].open("w") as out:
                procs.append(
                    subprocess.Popen(
                        cmd,
                        cwd=REPO,
                        env=_env(cache, runs),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        _wait(procs)
    finally:
        _kill(procs)
    text = [log.read_text() for log in logs]
    failed = [node for node, proc in enumerate(procs) if proc.returncode != 0]
    failed.sort(key=lambda node: procs[node].returncode == -signal.SIGKILL)  # the node that failed, not the one killed
    if failed:
        node = failed[0]
        raise AssertionError(f"node {node} exited {procs[node].returncode}:\n{text[node][-4000:]}")
    return text


def _one_node(tmp: Path, cache: Path, runs: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "medtune.train", *RUN]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(cache, runs), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _only_run(runs: Path) -> Path:
    dirs = [p for p in runs.glob("*/*") if p.is_dir()]  # <day>/<time>_nodes
    assert len(dirs) == 1, f"the ranks chose different run directories: {dirs}"
    return dirs[0]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(2 * TIMEOUT_S + 60)
def test_two_nodes_equal_one_node_with_two_ranks(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _one_node(tmp_path, cache, tmp_path / "one")
    logs = _two_nodes(tmp_path, cache, tmp_path / "two")
    one, two = _only_run(tmp_path / "one"), _only_run(tmp_path / "two")  # node 1 found node 0's run stamp
    ref = {r["step"]: r["train/loss"] for r in _rows(one) if "train/loss" in r}
    rows = [r for r in _rows(two) if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] == sorted(ref)  # one writer: no step logged twice
    for row in rows:
        assert row["train/loss"] == pytest.approx(ref[row["step"]], rel=1e-5), row["step"]
    ours, theirs = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (two, one))
    assert ours.keys() == theirs.keys() and ours
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["run/status"] == "ok"
    assert {"sys/train/rank0/cpu_rss_gib", "sys/train/rank1/cpu_rss_gib"} <= set(summary)  # both nodes trained
    holder = json.loads((two / ".medtune.lock").read_text())  # rank 0 (node 0) held it; rank 1 saw its own job
    assert holder["job"].startswith("medtune-nodes@"), holder
    assert "is in use by" not in logs[1] and "waited" not in logs[1]
