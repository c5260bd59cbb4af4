"""Two gloo processes under torchrun: FSDP2 and DDP give the single-process losses, save a loadable adapter,
and resume from a sharded checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
COMMON = [
    "model=tiny_llama",
    "trainer.device=cpu",
    "logger=jsonl",
    "eval=none",
    "trainer.log_every=1",
    "packing.max_seq_len=1024",
    "trainer.progress_bar=false",
    "lora.dropout=0",
    "optim.lr=3e-3",
    "optim.schedule=constant",
    "optim.warmup_ratio=0",
    "sharding.param_dtype=float32",  # CPU reference runs in fp32; bf16 compute would differ by ~1e-4
]


def _run(run_dir: Path, cache: Path, nproc: int, *overrides: str) -> dict[int, float]:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
        if nproc > 1
        else [sys.executable]
    )
    cmd = [*launcher, "-m", "medtune.train", *COMMON, f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "MEDTUNE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared-data cache for the module (preparing it is not what these tests test)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, dict[int, float]]:
    """One process, global batch = 2 micro-batches of 2 rows (accumulated)."""
    root = tmp_path_factory.mktemp("single")
    losses = _run(
        root / "run",
        cache,
        1,
        "trainer.max_steps=4",
        "trainer.micro_batch_size=2",
        "trainer.grad_accum_steps=2",
    )
    return root / "run", losses


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_ranks_match_one_process(strategy: str, single, cache: Path, tmp_path: Path) -> None:
    ref_dir, ref = single
    run = tmp_path / "run"
    losses = _run(run, cache, 2, f"sharding={strategy}", "trainer.max_steps=4", "trainer.micro_batch_size=2")
    assert losses.keys() == ref.keys()
    for step in ref:
        assert losses[step] == pytest.approx(ref[step], rel=1e-5), step
    ours = load_file(run / "adapter" / "adapter_model.safetensors")
    theirs = load_file(ref_dir / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and ours
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)


def test_fsdp_resumes_from_sharded_checkpoint(cache: Path, tmp_path: Path) -> None:
    straight = _run(tmp_path / "straight", cache, 2, "sharding=fsdp", "trainer.max_steps=4")
    resumed_dir = tmp_path / "resumed"
    _run(resumed_dir, cache, 2, "sharding=fsdp", "trainer.max_steps=2", "trainer.save_every=2")
    assert (resumed_dir / "checkpoints" / "step_000002" / "sharded").is_dir()
    resumed = _run(resumed_dir, cache, 2, "sharding=fsdp", "trainer.max_steps=4", "trainer.resume=auto")
    assert resumed[4] == pytest.approx(straight[4], rel=1e-5)
