"""experiments/lora_defaults/decide.py: the table and the paired comparison of the variants' evaluations (issue 30's
GPU decision), and a failed variant recorded beside the others, from run folders written here (no training)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("decide", REPO / "experiments" / "lora_defaults" / "decide.py")
decide = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decide)


def _answers(run_dir: Path, right: dict[str, int], shift: float) -> None:
    """eval/adapter/predictions.jsonl: 20 Korean and 20 English questions, the first `right[lang]` answered right."""
    rows = []
    for lang, task in (("ko", "kormed_law"), ("en", "medqa_4opt")):
        for i in range(20):
            rows.append({"task": task, "id": f"{task}:{i}", "language": lang, "domain": "medical",
                         "correct": i < right[lang], "gold_ll_letter": -1.5 + 0.01 * i + shift,
                         "gold_ll_text": -20.0 + shift})  # fmt: skip
    path = run_dir / "eval" / "adapter"
    path.mkdir(parents=True)
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_each_variant_is_compared_with_the_reference_question_by_question(tmp_path: Path) -> None:
    _answers(tmp_path / "fp32_d05", {"ko": 4, "en": 5}, 0.0)
    _answers(tmp_path / "bf16_d0", {"ko": 4, "en": 9}, -0.1)
    rows, text = decide.paired(tmp_path, ["fp32_d05", "bf16_d0", "fp32_d0"])  # fp32_d0 has no answers: left out
    assert list(rows) == ["bf16_d0"]
    by_group = {r["group"]: r for r in rows["bf16_d0"]}
    assert by_group["lang/en"]["n"] == 20 and by_group["lang/en"]["delta_pp"] == pytest.approx(20.0)
    assert by_group["lang/en"]["c_run_only"] == 4 and by_group["lang/ko"]["delta_pp"] == 0.0
    assert by_group["lang/ko"]["gold_ll_letter_delta"] == pytest.approx(-0.1)
    assert "### bf16_d0 against fp32_d05" in text and "| lang/en | 20 | 25.00 | 45.00 |" in text
    assert decide.paired(tmp_path, ["fp32_d0", "bf16_d0"])[0] == {}  # the reference is the first: no answers


def _run(loss: float, eval_loss: float | None, ko_acc: float | None) -> dict:
    scores = {} if ko_acc is None else {"eval/lang/ko/acc": ko_acc, "eval/lang/ko/gold_ll_letter": -1.25}
    return {"train_loss": [loss + 1, loss], "eval_loss": eval_loss, "wall_s": 10.0, "eval": scores}


def test_the_table_has_each_language_when_the_runs_evaluated() -> None:
    text = decide.table({"fp32_d05": _run(2.0, 1.9, 0.25), "bf16_d0": _run(2.1, None, 0.3)}, last=1)
    assert "| ko acc % | ko gold LL letter |" in text
    assert "| fp32_d05 | float32 | 0.05 | 2.0000 | +0.0000 | 1.9000 | +0.0000 | 25.00 | -1.2500 | 10 |" in text
    assert "| bf16_d0 | bfloat16 | 0.0 | 2.1000 | +0.1000 | n/a | n/a | 30.00 | -1.2500 | 10 |" in text
    assert "acc %" not in decide.table({"fp32_d0": _run(2.0, 1.9, None)}, last=1)  # a training-only comparison


def test_a_failed_variant_is_recorded_and_the_others_reported(tmp_path: Path, monkeypatch) -> None:
    def fake_start(out: Path, name: str, steps: int, extra: list[str], threads: int):
        """fp32_d05 'trains' (writes what a run writes, answers included); bf16_d0 exits 3."""
        run_dir = out / name
        if name == "fp32_d05":
            run_dir.mkdir(parents=True)
            (run_dir / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.5}\n{"step": 2, "train/loss": 2.0}\n')
            (run_dir / "summary.json").write_text(json.dumps({"eval/loss": 1.9, "eval/lang/ko/acc": 0.2}))
            _answers(run_dir, {"ko": 4, "en": 5}, 0.0)
        cmd = [sys.executable, "-c", f"raise SystemExit({0 if name == 'fp32_d05' else 3})", *extra]
        return subprocess.Popen(cmd), cmd, time.monotonic()

    monkeypatch.setattr(decide, "start", fake_start)
    argv = ["decide.py", "--out", str(tmp_path), "--only", "fp32_d05", "bf16_d0", "--device", "cuda", "--evaluate",
            "--", "+experiment=lora_decide_270m"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert decide.main() == 1
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["failed"] == ["bf16_d0"] and list(record["runs"]) == ["fp32_d05"]
    assert record["device"] == "cuda" and record["runs"]["fp32_d05"]["eval"] == {"eval/lang/ko/acc": 0.2}
    command = record["runs"]["fp32_d05"]["command"]
    assert "trainer.device=cuda" in command and "eval=none" not in command  # --evaluate keeps the eval stage
    text = (tmp_path / "results.md").read_text()
    assert "| fp32_d05 |" in text and "Failed: bf16_d0" in text
