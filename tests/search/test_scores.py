"""A run's change from base is read from its eval predictions through the eval stage's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtune.search.scores import run_changes


def _write(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path / "predictions.jsonl"


def _row(task: str, i: int, ll: float, correct: bool) -> dict:
    return {"task": task, "id": str(i), "language": "ko", "domain": "medical", "gold_ll_letter": ll, "correct": correct}


def test_changes_pair_the_questions_of_base_and_adapter(tmp_path: Path) -> None:
    _write(tmp_path / "eval" / "base", [_row("kx", 0, -2.0, False), _row("kx", 1, -1.0, True)])
    _write(tmp_path / "eval" / "adapter", [_row("kx", 1, -0.5, True), _row("kx", 0, -1.5, True)])
    changes = run_changes(tmp_path, ["lang:ko", "kx"])
    assert changes["kx"]["gold_ll"] == {"kx/0": 0.5, "kx/1": 0.5}
    assert changes["lang:ko"]["acc"] == {"kx/0": 100.0, "kx/1": 0.0}


def test_a_torn_line_names_the_file_and_line(tmp_path: Path) -> None:
    """A write cut short is not read as fewer questions: the search records the run as failed with this line."""
    _write(tmp_path / "eval" / "base", [_row("kx", 0, -2.0, False), _row("kx", 1, -1.0, True)])
    path = _write(tmp_path / "eval" / "adapter", [_row("kx", 0, -1.5, True), _row("kx", 1, -0.5, True)])
    text = path.read_text()
    path.write_text(text[: len(text) - 20])
    with pytest.raises(ValueError, match=rf"{path}:2: not a JSON object"):
        run_changes(tmp_path, ["kx"])
