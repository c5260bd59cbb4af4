"""The entry point end to end on a tiny model: the demo path, multirun, and resume after a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model=tiny_llama",
    "trainer.device=cpu",
    "trainer.micro_batch_size=2",
    "trainer.progress_bar=false",
    "packing.max_seq_len=1024",
    "optim.lr=3e-3",
    "optim.warmup_ratio=0",
    "lora.dropout=0.1",
]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "MEDTUNE_CACHE_DIR": str(cache), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _train(run_dir: Path, cache: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "medtune.train", *TINY, f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(cache), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_demo_path_trains_saves_and_evaluates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(run, tmp_path / "cache", "trainer.max_steps=4", "trainer.log_every=2", "logger=jsonl", "eval.limit=8")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run/status"] == "ok"
    assert summary["train/loss"] > 0 and summary["train/useful_tokens_per_s"] > 0
    for lang in ("ko", "en"):
        assert 0.0 <= summary[f"eval/lang/{lang}/acc"] <= 1.0
        assert summary[f"data_mix/{lang}/examples"] > 0
    assert (run / "config.yaml").is_file() and (run / "adapter" / "adapter_config.json").is_file()
    assert {"sys/load/cpu_rss_gib", "sys/train/cpu_rss_gib", "sys/lm_eval/cpu_rss_gib"} <= summary.keys()


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path) -> None:
    common = ["trainer.max_steps=24", "trainer.log_every=1", "trainer.save_every=3", "logger=jsonl", "eval=none"]
    cache = tmp_path / "cache"
    reference = tmp_path / "reference"
    _train(reference, cache, *common)

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "medtune.train", *TINY, f"hydra.run.dir={killed}", *common]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_000006").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (
        not (killed / "summary.json").exists()
        or json.loads((killed / "summary.json").read_text()).get("run/status") != "ok"
    )

    _train(killed, cache, *common, "trainer.resume=auto")
    assert not list((killed / "checkpoints").glob("*.tmp-*")), "a half-written checkpoint was left behind"
    ref, resumed = _losses(reference), _losses(killed)
    assert resumed[24] == pytest.approx(ref[24], rel=1e-4, abs=1e-5)
    assert max(resumed) == 24


def test_multirun_over_two_ratios_feeds_the_report(tmp_path: Path) -> None:
    """`-m data_mix.ratio=1:1,3:1` on a tiny model: one run dir per ratio, the report's numbers are theirs."""
    import pandas as pd

    from medtune.report import main as report_main

    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "medtune.train",
        "-m",
        *TINY,
        "trainer.max_steps=2",
        "logger=jsonl",
        "eval.limit=6",
        "eval.sanity=warn",
        "data_mix.ratio=1:1,3:1",
        f"eval.cache_dir={tmp_path / 'eval_base'}",  # a path override must not nest the job dirs
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summaries = {p.parent: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert len(summaries) == 2 and all(s["run/status"] == "ok" for s in summaries.values())
    shares = sorted(round(s["data_mix/en/share_examples"], 2) for s in summaries.values())
    assert shares == [0.5, 0.75]  # the mix each job asked for is the mix it got

    out = tmp_path / "report"
    assert report_main([str(sweep), "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("run")
    for run_dir, summary in summaries.items():
        row = runs.loc[run_dir.name]
        for key in ("eval/lang/ko/acc", "eval/lang/en/acc", "base/eval/lang/ko/acc", "forgetting/ko/delta_pp"):
            assert row[key] == pytest.approx(summary[key], abs=1e-9), key
    assert sorted(runs["ratio"]) == ["1:1", "3:1"]
    for png in out.glob("*.png"):
        assert png.stat().st_size > 10_000, png
    assert len(list(out.glob("*.png"))) >= 3


def test_unwritable_checkpoint_dir_exits_1_with_one_line_and_a_summary(tmp_path: Path) -> None:
    """A checkpoint that cannot be written (here: `checkpoints` is a file) ends the run with one line, exit 1."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("")
    proc = _train(run, tmp_path / "cache", "trainer.max_steps=1", "trainer.save_every=1", "eval=none",
                  "logger=jsonl", check=False)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "Traceback" not in out
    assert f"could not write checkpoint step_000001 to {run / 'checkpoints'} (Not a directory [errno 20])" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run/status"] == "failed" and "free on that disk" in summary["run/error"]
