"""Two gloo processes under torchrun: FSDP2 and DDP give the single-process losses, save a loadable adapter,
resume from a sharded checkpoint, score held-out rows and lm-eval questions that do not divide by the ranks exactly
as one process does, and end with a failed summary (not a hang) when a rank stalls or dies.

Every launch has a subprocess timeout, so a hang fails the test instead of waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

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


def _launch(
    nproc: int, entry: list[str], cache: Path, *args: str, timeout_s: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    cmd = [*(launcher or [sys.executable]), *entry, *args]
    env = {**os.environ, "MEDTUNE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


def _run(run_dir: Path, cache: Path, nproc: int, *overrides: str) -> dict[int, float]:
    proc = _launch(nproc, ["-m", "medtune.train"], cache, *COMMON, f"hydra.run.dir={run_dir}", *overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _metric(run_dir, "train/loss")


def _metric(run_dir: Path, key: str) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


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
    summary = json.loads((run / "summary.json").read_text())  # the job's throughput and every rank's memory
    assert summary["train/useful_tokens_per_s_all_ranks"] > summary["train/useful_tokens_per_s"] > 0
    assert {"sys/train/rank0/cpu_rss_gib", "sys/train/rank1/cpu_rss_gib", "sys/load/rank1/cpu_rss_gib"} <= set(summary)
    for step in ref:
        assert losses[step] == pytest.approx(ref[step], rel=1e-5), step
    ours = load_file(run / "adapter" / "adapter_model.safetensors")
    theirs = load_file(ref_dir / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and ours
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("strategy", "written"), [("fsdp", "sharded"), ("ddp", "trainable.pt")])
def test_two_ranks_resume_from_their_checkpoint(strategy: str, written: str, cache: Path, tmp_path: Path) -> None:
    """With LoRA dropout and unpacked rows of different lengths, each rank's random draws differ: every rank's RNG
    must come back from the checkpoint (restoring rank 0's everywhere changed rank 1's dropout masks). FSDP writes
    every rank's shard (ShardedCheckpointer), DDP one file set from rank 0 (LocalCheckpointer)."""
    common = [f"sharding={strategy}", "lora.dropout=0.1", "packing=none", "trainer.micro_batch_size=3"]
    straight = _run(tmp_path / "straight", cache, 2, *common, "trainer.max_steps=4")
    resumed_dir = tmp_path / "resumed"
    _run(resumed_dir, cache, 2, *common, "trainer.max_steps=2", "trainer.save_every=2")
    assert (resumed_dir / "checkpoints" / "step_000002" / written).exists()
    resumed = _run(resumed_dir, cache, 2, *common, "trainer.max_steps=4", "trainer.resume=auto")
    assert resumed[3] == pytest.approx(straight[3], rel=1e-6) and resumed[4] == pytest.approx(straight[4], rel=1e-6)


@pytest.mark.parametrize("heldout_batches", [1, 3])
def test_heldout_loss_with_fewer_or_odd_batches_than_ranks(heldout_batches: int, cache: Path, tmp_path: Path) -> None:
    """1 and 3 held-out micro-batches on 2 ranks: no hang, and the held-out loss of one process at every eval_every."""
    common = ["trainer.max_steps=2", "trainer.eval_every=1", f"trainer.eval_batches={heldout_batches}"]
    _run(tmp_path / "one", cache, 1, *common, "trainer.micro_batch_size=1", "trainer.grad_accum_steps=2")
    _run(tmp_path / "two", cache, 2, *common, "sharding=fsdp", "trainer.micro_batch_size=1")
    one, two = _metric(tmp_path / "one", "eval/loss"), _metric(tmp_path / "two", "eval/loss")
    assert sorted(one) == sorted(two) == [1, 2]  # every eval_every step, then the final one (also step 2)
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
    assert _metric(tmp_path / "two", "eval/loss_tokens") == _metric(tmp_path / "one", "eval/loss_tokens")


def test_watch_on_two_ranks_equals_one_process(cache: Path, tmp_path: Path) -> None:
    """The watch under 2-rank FSDP (7 questions per set, 2 per forward: the ranks' shares differ, so the lockstep
    joins run) logs one process's values at every watched step; keep=best restores the same step's sharded weights
    and the guard reads the same test. The base is scored afresh in both runs."""
    watch = ["eval.watch=[sample_ko,sample_en]", "eval.watch_limit=7", "eval.watch_every=1", "eval.watch_batch_size=2"]
    watch += ["eval.watch_accuracy=true", "eval.cache_base=false", "trainer.max_steps=3", "trainer.keep=best"]
    watch += ["trainer.guard.protect=[lang:ko]", "trainer.guard.action=mark", "trainer.micro_batch_size=2"]
    _run(tmp_path / "one", cache, 1, *watch, "trainer.grad_accum_steps=2")
    _run(tmp_path / "two", cache, 2, *watch, "sharding=fsdp")
    keys = ["watch/lang/ko/delta_gold_ll", "watch/lang/ko/delta_gold_ll_ci_high", "watch/sample_en/base_gold_ll"]
    for key in [*keys, "watch/sample_en/gold_ll", "watch/sample_ko/acc", "guard/lang/ko/ci_high", "keep/criterion"]:
        one, two = _metric(tmp_path / "one", key), _metric(tmp_path / "two", key)
        assert sorted(one) == sorted(two) == [1, 2, 3], key
        for step in one:
            assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), (key, step)
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert two["keep/step"] == one["keep/step"] and two["guard/fired"] == one["guard/fired"]
    ours, theirs = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("two", "one"))
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)


def _predictions(eval_dir: Path, label: str) -> dict[tuple[str, str], dict]:
    lines = (eval_dir / label / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return {(r["task"], r["id"]): r for r in map(json.loads, lines)}


def test_fsdp_train_eval_scores_like_one_process(cache: Path, tmp_path: Path) -> None:
    """The eval stage after 2-rank FSDP training: 7 questions per task (odd, so shares differ), and per-question
    predictions equal to a one-process evaluation of the saved adapter (base scored afresh, not from the cache)."""
    run = tmp_path / "two"
    evaluation = ["eval=demo", "eval.limit=7", "eval.batch_size=4"]
    proc = _launch(
        2, ["-m", "medtune.train"], cache, *COMMON[:3], *COMMON[4:], *evaluation, "sharding=fsdp",
        "trainer.max_steps=2", "trainer.micro_batch_size=2", f"hydra.run.dir={run}", "eval.cache_base=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run/status"] == "ok"
    assert summary["eval/lang/ko/n"] == summary["eval/lang/en/n"] == 7
    assert "forgetting/ko/delta_pp" in summary and (run / "eval" / "report.md").is_file()
    ref = tmp_path / "one"
    proc = _launch(
        1, ["-m", "medtune.evaluate"], cache, "model=tiny_llama", "trainer.device=cpu", *evaluation,
        f"eval.adapter={run / 'adapter'}", f"hydra.run.dir={ref}", "eval.cache_base=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    for label in ("adapter", "base"):
        ours, theirs = _predictions(run / "eval", label), _predictions(ref / "eval", label)
        assert ours.keys() == theirs.keys() and len(ours) == 14
        for key, row in ours.items():
            assert row["pred"] == theirs[key]["pred"], (label, key)
            assert row["choice_lls"] == pytest.approx(theirs[key]["choice_lls"], abs=1e-4), (label, key)
            assert row["gold_ll_text"] == pytest.approx(theirs[key]["gold_ll_text"], abs=1e-3), (label, key)
    ours, theirs = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (run, ref))
    for key in ("eval/lang/ko/acc", "eval/lang/en/acc", "base/eval/lang/ko/acc", "forgetting/en/delta_pp"):
        assert ours[key] == pytest.approx(theirs[key]), key


def test_evaluate_under_torchrun_spreads_the_questions(cache: Path, tmp_path: Path) -> None:
    """`python -m medtune.evaluate` on 2 ranks (FSDP-sharded base): the predictions of one process."""
    evaluation = ["model=tiny_llama", "trainer.device=cpu", "eval=demo", "eval.limit=5", "eval.cache_base=false"]
    for nproc, extra in ((1, []), (2, ["sharding=fsdp", "sharding.param_dtype=float32"])):
        proc = _launch(
            nproc, ["-m", "medtune.evaluate"], cache, *evaluation, *extra, f"hydra.run.dir={tmp_path / str(nproc)}"
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = _predictions(tmp_path / "1" / "eval", "base"), _predictions(tmp_path / "2" / "eval", "base")
    assert one.keys() == two.keys() and len(one) == 10
    # the eval's memory, every rank's (on a CPU: its RSS; on a GPU also peak allocated/reserved)
    memory = json.loads((tmp_path / "2" / "eval" / "memory.json").read_text())
    assert {"sys/eval/cpu_rss_gib", "sys/eval/rank0/cpu_rss_gib", "sys/eval/rank1/cpu_rss_gib"} <= memory.keys()
    for key, row in one.items():
        assert two[key]["pred"] == row["pred"] and two[key]["choice_lls"] == pytest.approx(row["choice_lls"], abs=1e-4)


@pytest.mark.parametrize("fault", ["stall", "kill"])
def test_a_stalled_or_dead_rank_fails_the_run_with_a_record(fault: str, cache: Path, tmp_path: Path) -> None:
    """Rank 1 never joins step 2 (or dies there): every rank exits and summary.json says failed, where and why.
    Before that, rank 1 spends longer than the timeout building its data (as a slow machine may): that is not a hang,
    and the run must reach step 2."""
    slow = "15" if fault == "stall" else "0"
    run = tmp_path / "run"
    started = time.monotonic()
    proc = _launch(
        2, [str(REPO / "tests" / "fixtures" / "faulty_train.py")], cache, *COMMON, "sharding=fsdp",
        "trainer.max_steps=4", "trainer.micro_batch_size=2", "sharding.timeout_min=0.2", f"hydra.run.dir={run}",
        timeout_s=240,
        env={"MEDTUNE_TEST_FAULT": fault, "MEDTUNE_TEST_FAULT_STEP": "2", "MEDTUNE_TEST_SLOW_DATA_S": slow},
    )  # fmt: skip
    elapsed_s = time.monotonic() - started
    assert proc.returncode != 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run/status"] == "failed", summary
    assert summary["run/failed_phase"] == "train" and summary["run/failed_step"] == 2, summary
    # rank 0 records its own watchdog's verdict ("no progress for 12 s in phase train at step 2") or, when the other
    # rank's watchdog ended it first, what it saw of that ("connection closed by peer"), with the same phase and step
    assert "phase train at step 2" in summary["run/error"], summary["run/error"]
    assert elapsed_s < 180, f"the job took {elapsed_s:.0f} s to go down"
    assert "adapter" not in {p.name for p in run.iterdir()}
