"""ContinuationLM scores lm-eval's requests like lm-eval's own HFLM, from the continuation positions alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_model
from fixtures.eval.lm import byte_tokenizer, fixture_loader, register_fixture_tasks

from medtune.eval.scoring import score
from medtune.eval.tasks import build_task_data, write_task_files


def _lora(model: torch.nn.Module, targets: list[str]) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.3)
    return peft_model.eval()


def _score_both(tmp_path: Path, model: torch.nn.Module, scoring: str, fewshot: int, batch_size: int):
    tasks = build_task_data(["fx_ko", "fx_en"], None, limit=9, num_fewshot=fewshot, seed=0, loader=fixture_loader)
    names = write_task_files(tasks, tmp_path / "tasks", scoring, fewshot)
    tok = byte_tokenizer()
    args = (tasks, tmp_path / "tasks", names, scoring, batch_size)
    ours = score(model, tok, *args, tmp_path / "ours", scorer="continuation", max_length=160)
    theirs = score(model, tok, *args, tmp_path / "theirs", scorer="hflm", max_length=160)
    return ours, theirs


@pytest.mark.parametrize(
    ("arch", "scoring", "fewshot", "batch_size", "targets"),
    [
        ("tiny_llama", "letter", 0, 4, ["q_proj", "v_proj"]),
        ("tiny_gemma3", "letter", 1, 3, ["q_proj", "down_proj"]),
        ("tiny_gemma3", "cloze", 0, 5, ["q_proj", "v_proj"]),
        ("tiny_llama", "cloze", 1, 2, ["q_proj", "lm_head"]),  # a LoRA on the head itself
    ],
)
def test_same_predictions_and_log_likelihoods_as_hflm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, scoring: str, fewshot: int, batch_size: int, targets
) -> None:
    """Letter and cloze scoring, with and without few-shot context (max_length=160 truncates some from the left),
    Llama and Gemma 3 (sliding windows, tied head), a LoRA on the attention, the MLP or the output projection."""
    register_fixture_tasks(monkeypatch)
    model = _lora(tiny_model(arch, attn_implementation="sdpa"), targets)
    ours, theirs = _score_both(tmp_path, model, scoring, fewshot, batch_size)
    assert [(r["task"], r["id"]) for r in ours] == [(r["task"], r["id"]) for r in theirs] and len(ours) == 18
    for a, b in zip(ours, theirs, strict=True):
        assert a["pred"] == b["pred"] and a["correct"] == b["correct"], a["id"]
        assert a["choice_lls"] == pytest.approx(b["choice_lls"], abs=2e-4), a["id"]
        assert a["letter_lls"] == pytest.approx(b["letter_lls"], abs=2e-4), a["id"]
        assert a["gold_ll_text"] == pytest.approx(b["gold_ll_text"], abs=2e-4), a["id"]


def test_no_full_vocabulary_logits_over_the_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output projection sees only continuation positions: a few rows per question, never batch x length."""
    register_fixture_tasks(monkeypatch)
    model = tiny_model("tiny_llama", attn_implementation="sdpa")
    rows_seen: list[int] = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, inputs, _o: rows_seen.append(inputs[0].reshape(-1, 64).shape[0]))
    try:
        tasks = build_task_data(["fx_en"], None, limit=6, num_fewshot=0, seed=0, loader=fixture_loader)
        names = write_task_files(tasks, tmp_path / "tasks", "letter", 0)
        score(model, byte_tokenizer(), tasks, tmp_path / "tasks", names, "letter", 4, tmp_path / "o", max_length=160)
    finally:
        handle.remove()
    assert rows_seen and max(rows_seen) <= 40  # the gold-text pass: one option's tokens; letters: 1 row each


def _predictions(path: Path) -> dict[tuple[str, str], dict]:
    import gzip
    import json

    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {(r["task"], r["id"]): r for r in map(json.loads, f)}


def test_committed_h200_eval_matches_the_committed_base_within_the_training_memory() -> None:
    """experiments/results/eval_memory_270m: the Gemma 3 270M base on the 8,110 medical questions, scored on an H200
    by the continuation scorer, predicts what the committed mix_sweep base (HFLM, H100) predicts, at a peak below
    the same model's training peak (mix_watch), while HFLM's peak is several times that."""
    import json

    results = REPO / "experiments" / "results"
    base = _predictions(results / "mix_sweep" / "base" / "eval" / "predictions.jsonl.gz")
    ours = _predictions(results / "eval_memory_270m" / "continuation" / "eval" / "predictions.jsonl.gz")
    assert ours.keys() == base.keys() and len(ours) == 8110
    assert all(ours[k]["pred"] == base[k]["pred"] for k in ours)
    gap = max(abs(a - b) for k in ours for a, b in zip(ours[k]["choice_lls"], base[k]["choice_lls"], strict=True))
    assert gap < 0.05  # bf16 rounding (0.0156 measured)
    peak = {n: json.loads((results / "eval_memory_270m" / n / "eval" / "memory.json").read_text())
            for n in ("continuation", "hflm")}  # fmt: skip
    training = json.loads((results / "mix_watch" / "runs" / "1-1" / "summary.json").read_text())
    assert peak["continuation"]["sys/eval/peak_alloc_gib"] <= training["sys/train/peak_alloc_gib"]
    assert peak["hflm"]["sys/eval/peak_alloc_gib"] > 4 * training["sys/train/peak_alloc_gib"]
