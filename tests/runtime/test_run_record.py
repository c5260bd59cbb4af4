"""The run directory's record: the original config survives a resume, resumed steps are not logged twice."""

from __future__ import annotations

import json
from pathlib import Path

from medtune.runtime.run_record import keep_record, trim_metrics, write_failed_summary


def _jsonl(path: Path, steps: list[int]) -> None:
    path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0 / (s + 1)}) + "\n" for s in steps))


def test_resume_keeps_the_original_config_and_numbers_the_others(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert keep_record(tmp_path, "seed: 1\n", 2, "auto") == tmp_path / "config.resume-1.yaml"
    assert keep_record(tmp_path, "seed: 2\n", 4, "auto") == tmp_path / "config.resume-2.yaml"
    assert (tmp_path / "config.yaml").read_text() == "seed: 0\n"
    assert (tmp_path / "config.resume-2.yaml").read_text() == "seed: 2\n"


def test_a_restart_without_checkpoint_replaces_the_attempt(tmp_path: Path) -> None:
    """trainer.resume=auto with nothing to resume: step 0 again, so the earlier attempt's config and lines go."""
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    _jsonl(tmp_path / "metrics.jsonl", [0, 1, 2])
    assert keep_record(tmp_path, "seed: 5\n", None, "auto") == tmp_path / "config.yaml"
    assert (tmp_path / "config.yaml").read_text() == "seed: 5\n"
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_metrics_after_the_checkpoint_step_and_torn_lines_are_dropped(tmp_path: Path) -> None:
    _jsonl(tmp_path / "metrics.jsonl", [0, 1, 2, 3, 4, 5])
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "train/lo')  # a kill in mid-write
    (tmp_path / "metrics.csv").write_text("step,elapsed_s,key,value\n1,0.1,train/loss,2.0\n3,0.3,train/loss,1.5\n4,0")
    assert keep_record(tmp_path, "x: 1\n", 3, "auto").name == "config.yaml"
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    assert (
        tmp_path / "metrics.csv"
    ).read_text() == "step,elapsed_s,key,value\n1,0.1,train/loss,2.0\n3,0.3,train/loss,1.5\n"
    assert trim_metrics(tmp_path, 3) == 0  # nothing more to drop: the files are left alone
    assert not list(tmp_path.glob(".*tmp"))


def test_never_resume_leaves_metrics_alone(tmp_path: Path) -> None:
    _jsonl(tmp_path / "metrics.jsonl", [0, 1, 2])
    keep_record(tmp_path, "x: 1\n", None, "never")
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_failed_summary_merges_into_what_the_run_wrote(tmp_path: Path) -> None:
    assert write_failed_summary(tmp_path / "job", {"run/status": "failed", "run/error": "E"})["run/error"] == "E"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"train/loss": 2.0, "run/status": "failed"}))
    merged = write_failed_summary(tmp_path / "run", {"run/overrides": "seed=1", "run/job": 3})
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == merged
    assert merged == {"train/loss": 2.0, "run/status": "failed", "run/overrides": "seed=1", "run/job": 3}
