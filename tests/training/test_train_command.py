"""The entry point end to end on a tiny model: the demo path, multirun, and resume after a real kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_RUN

TINY = [
    *TINY_RUN,
    "lora.dropout=0.1",
]


def _env(cache: Path) -> dict[str, str]:
    wandb_home = {f"WANDB_{d}_DIR": str(cache.parent / "wandb_home" / d.lower()) for d in ("CONFIG", "CACHE", "DATA")}
    return {
        **os.environ,
        "MEDTUNE_CACHE_DIR": str(cache),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **wandb_home,
    }


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

    from medtune.report.cli import main as report_main

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


def test_resume_with_another_config_stops_and_an_allowed_change_is_recorded(tmp_path: Path) -> None:
    """Issue 18, finding 1: a changed ratio/seed/lr/max_steps is refused before loading; an allowed max_steps is
    recorded, the original config.yaml stays, no step is logged twice and the W&B run continues (same id)."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    common = ["trainer.log_every=1", "eval=none", "logger=wandb", "trainer.keep_checkpoints=3"]
    _train(run, cache, *common, "trainer.max_steps=3", "trainer.save_every=1")
    shutil.rmtree(run / "checkpoints" / "step_000003")  # as if killed after logging step 3, before its checkpoint
    before = {name: (run / name).read_text() for name in ("config.yaml", "metrics.jsonl")}
    wandb_id = (run / "wandb_run_id.txt").read_text()

    changed = ["trainer.max_steps=4", "data_mix.ratio=3:1", "seed=7", "optim.lr=0.01", "trainer.resume=auto"]
    refused = _train(run, cache, *common, *changed, check=False)
    out = refused.stdout + refused.stderr
    assert refused.returncode == 2, out[-4000:]
    expected = [
        "data_mix.ratio: checkpoint null, now",
        "seed: checkpoint 0, now 7",
        "optim.lr: checkpoint 0.003",
        "trainer.max_steps: checkpoint 3, now 4 (the cosine schedule",
        "trainer.resume_allow=[data_mix.ratio,data_mix.weights,trainer.max_steps]",
    ]
    for key in expected:
        assert key in out, key
    assert "Traceback" not in out and "built tiny_llama" not in out  # stopped before the model loaded
    assert {name: (run / name).read_text() for name in before} == before  # the record is untouched

    allow = ["trainer.max_steps=4", "trainer.resume_allow=[trainer.max_steps]", "trainer.resume=auto"]
    _train(run, cache, *common, *allow)
    assert (run / "config.yaml").read_text() == before["config.yaml"]
    assert "max_steps: 4" in (run / "config.resume-1.yaml").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]  # the first attempt's step 3 was dropped
    assert [r["step"] for r in rows if "eval/loss" in r] == [4]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run/status"] == "ok" and summary["run/resumed_at_step"] == 2
    changes = {"trainer.max_steps": [3, 4], "trainer.save_every": [1, 0]}  # the second one is free, yet recorded
    assert json.loads(summary["run/resume_changes"]) == [{"step": 2, "changes": changes}]
    assert (run / "wandb_run_id.txt").read_text() == wandb_id
    offline = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(wandb_id.strip()) for name in offline)  # one W&B run, resumed


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


def test_resume_onto_rewritten_data_is_refused_naming_the_source_unless_allowed(tmp_path: Path) -> None:
    """Issue 32, item 2: a killed run whose JSONL was rewritten (every question and answer) resumed with rc 0 and
    nothing recorded; now the checkpoint holds the data's fingerprint, the resume stops in one line naming the
    source (exit 2, nothing loaded), and trainer.resume_allow=[data] continues and records the change."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    exam = tmp_path / "exam.jsonl"
    shutil.copy(REPO / "medtune" / "data" / "examples" / "ja" / "exam_questions.jsonl", exam)
    common = ["+experiment=own_data_ja", f"data.datasets.ja_exam.path={exam}", f"data.data_dir={tmp_path / 'none'}",
              "trainer.max_steps=2", "trainer.save_every=1", "trainer.keep_checkpoints=3", "eval=none",
              "logger=jsonl"]  # fmt: skip
    _train(run, cache, *common)
    shutil.rmtree(run / "checkpoints" / "step_000002")  # as if killed after step 2, before its checkpoint
    state = json.loads((run / "checkpoints" / "step_000001" / "state.json").read_text())
    assert {"data.content.ja_exam:train", "data.content.sample_en:train", "data.selected"} <= state["data"].keys()

    rows = [json.loads(line) for line in exam.read_text(encoding="utf-8").splitlines()]
    shifted = {letter: "ABCD"[(i + 1) % 4] for i, letter in enumerate("ABCD")}
    rewritten = [r | {"stem": r["stem"] + "(改訂)", "correct": shifted[r["correct"]]} for r in rows]
    exam.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rewritten), encoding="utf-8")
    refused = _train(run, cache, *common, "trainer.resume=auto", check=False)
    out = refused.stdout + refused.stderr
    assert refused.returncode == 2, out[-4000:]
    lines = [line for line in out.splitlines() if "the training data changed" in line]
    assert len(lines) == 1 and "ja_exam:train (rows changed)" in lines[0], out[-4000:]
    assert "sample_en" not in lines[0] and "trainer.resume_allow=[data]" in lines[0]
    assert "Traceback" not in out and "resumed from" not in out

    _train(run, cache, *common, "trainer.resume=auto", "trainer.resume_allow=[data]")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run/status"] == "ok" and summary["run/resumed_at_step"] == 1
    [accepted] = json.loads(summary["run/resume_changes"])
    assert accepted["step"] == 1 and list(accepted["changes"]) == ["data.content.ja_exam:train"]  # same ids drawn
    again = json.loads((run / "checkpoints" / "step_000002" / "state.json").read_text())
    assert again["resumes"] == [accepted] and again["data"] != state["data"]  # the next checkpoints carry it on
