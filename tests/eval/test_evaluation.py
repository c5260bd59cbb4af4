"""End to end on CPU: lm-eval scores fixture tasks offline through an in-memory tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.eval.lm import byte_tokenizer, fixture_loader, fixture_records, forced_model, register_fixture_tasks

from medtune.config import DataConfig, EvalConfig
from medtune.eval.adapter_check import AdapterInactiveError, check_adapter_active
from medtune.eval.evaluation import evaluate
from medtune.eval.sanity import EvalSanityError


def _cfg(tmp_path: Path, **overrides: object) -> EvalConfig:
    base = {"tasks": ["fx_ko", "fx_en"], "cache_dir": str(tmp_path / "eval_base"), "batch_size": 8}
    return EvalConfig(**(base | overrides))


def _lora(model: object, perturb: bool) -> object:
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    if perturb:
        torch.manual_seed(1)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0.0, 0.5)
    return peft_model.eval()


@pytest.fixture
def fixture_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    register_fixture_tasks(monkeypatch)


def test_oracle_scores_100_percent(tmp_path: Path, fixture_tasks: None) -> None:
    model, tok = forced_model("oracle"), byte_tokenizer()
    metrics = evaluate(model, tok, _cfg(tmp_path), DataConfig(), tmp_path / "run", label="base", loader=fixture_loader)
    assert metrics["eval/fx_ko/acc"] == 1.0 and metrics["eval/fx_en/acc"] == 1.0
    assert metrics["eval/lang/ko/n"] == 30 and metrics["eval/lang/en/acc"] == 1.0
    assert metrics["eval/fx_en/acc_ci_low"] < 1.0 == metrics["eval/fx_en/acc_ci_high"]
    assert metrics["eval/fx_ko/gold_ll_letter"] > -1e-3  # all mass on the gold letter
    rows = [json.loads(x) for x in (tmp_path / "run/eval/base/predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and all(r["correct"] and r["pred"] == r["gold"] for r in rows)
    assert (tmp_path / "run/eval/base/samples.jsonl").stat().st_size > 0
    assert (tmp_path / "run/eval/tasks/fx_ko.yaml").is_file()


def test_constant_model_scores_its_letter_share(tmp_path: Path, fixture_tasks: None) -> None:
    model, tok = forced_model("constant", letter="B"), byte_tokenizer()
    with pytest.raises(EvalSanityError, match="predicts 'B' for all 20"):
        cfg = _cfg(tmp_path, tasks=["fx_en"], limit=20)
        evaluate(model, tok, cfg, DataConfig(), tmp_path / "run", label="base", loader=fixture_loader)
    cfg = _cfg(tmp_path, sanity="warn", cache_base=False)
    metrics = evaluate(model, tok, cfg, DataConfig(), tmp_path / "run2", label="base", loader=fixture_loader)
    for task in ("fx_ko", "fx_en"):
        golds = [r.answer_index for r in fixture_records(task, "test")]
        assert metrics[f"eval/{task}/acc"] == pytest.approx(golds.count(1) / len(golds))


def test_fewshot_limit_and_cloze(tmp_path: Path, fixture_tasks: None) -> None:
    model, tok = forced_model("oracle"), byte_tokenizer()
    cfg = _cfg(tmp_path, num_fewshot=2, limit=7, scoring="cloze", sanity="off")
    metrics = evaluate(model, tok, cfg, DataConfig(), tmp_path / "run", label="base", loader=fixture_loader)
    assert metrics["eval/fx_ko/n"] == 7
    samples = [json.loads(x) for x in (tmp_path / "run/eval/base/samples.jsonl").read_text().splitlines()]
    context = next(s for s in samples if s["task"] == "fx_en")["arguments"][0][0]
    assert context.count("Question:") == 3  # two shots and the question
    rows = [json.loads(x) for x in (tmp_path / "run/eval/base/predictions.jsonl").read_text().splitlines()]
    assert all(r["gold_ll_text"] == r["choice_lls"]["ABCDE".index(r["gold"])] for r in rows)
    assert all(r["gold_ll_letter"] > -1e-3 for r in rows)  # the letter pass still sees the oracle
    # the same seed draws the same subset
    again = evaluate(model, tok, cfg, DataConfig(), tmp_path / "run2", label="base", loader=fixture_loader)
    assert again["eval/fx_en/acc"] == metrics["eval/fx_en/acc"]


def test_out_of_memory_retries_at_half_the_batch(
    tmp_path: Path, fixture_tasks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CUDA OOM inside lm-eval (a shared GPU) is retried at half the batch, twice here: 8 -> 4 -> 2."""
    import lm_eval
    import torch

    real, calls = lm_eval.simple_evaluate, []

    def flaky(*args: object, **kwargs: object) -> object:
        calls.append(kwargs["model"].batch_size_per_gpu)
        if len(calls) <= 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB.")
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", flaky)
    model, tok = forced_model("oracle"), byte_tokenizer()
    metrics = evaluate(model, tok, _cfg(tmp_path, limit=5), DataConfig(), tmp_path / "run", "base", fixture_loader)
    assert calls == [8, 4, 2] and metrics["eval/fx_en/acc"] == 1.0
    assert json.loads((tmp_path / "run/eval/base/lm_eval_results.json").read_text())["batch_size"] == 2
    # the cache is keyed on eval.batch_size=8: a base scored at 2 is not stored under it
    assert not list((tmp_path / "eval_base").glob("*/predictions.jsonl"))

    def always(*args: object, **kwargs: object) -> object:
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(lm_eval, "simple_evaluate", always)
    with pytest.raises(torch.OutOfMemoryError):  # at batch 1 the error is the user's to see
        evaluate(
            model, tok, _cfg(tmp_path, limit=5, cache_base=False), DataConfig(), tmp_path / "r2", "base", fixture_loader
        )


def test_adapter_check_fails_on_untrained_lora() -> None:
    from conftest import tiny_model

    tok = byte_tokenizer()
    with pytest.raises(AdapterInactiveError, match="does not change the logits"):
        check_adapter_active(_lora(tiny_model("tiny_llama"), perturb=False), tok)
    assert check_adapter_active(_lora(tiny_model("tiny_llama"), perturb=True), tok) > 1e-3


def test_adapter_vs_cached_base_gives_forgetting(tmp_path: Path, fixture_tasks: None) -> None:
    from conftest import tiny_model

    tok = byte_tokenizer()
    cfg = _cfg(tmp_path, sanity="warn", bootstrap_samples=200, limit=10, confidence=0.9, seed=3)
    model = _lora(tiny_model("tiny_llama"), perturb=True)
    metrics = evaluate(model, tok, cfg, DataConfig(), tmp_path / "run", label="adapter", loader=fixture_loader)
    for lang in ("ko", "en"):
        assert metrics[f"forgetting/{lang}/n"] == 10
        assert metrics[f"forgetting/{lang}/delta_pp_ci_low"] <= metrics[f"forgetting/{lang}/delta_pp"]
        assert 0.0 <= metrics[f"forgetting/{lang}/p_mcnemar"] <= 1.0
        assert f"forgetting/{lang}/gold_ll_text_delta" in metrics
        assert metrics[f"base/eval/lang/{lang}/n"] == 10
        # the level and the bootstrap that produced the intervals, beside them
        assert (
            metrics[f"forgetting/{lang}/bootstrap_samples"] == 200 and metrics[f"forgetting/{lang}/bootstrap_seed"] == 3
        )
        assert metrics[f"forgetting/{lang}/confidence"] == metrics[f"eval/lang/{lang}/confidence"] == 0.9
    saved = json.loads((tmp_path / "run/eval/forgetting.json").read_text())
    assert {(r["confidence"], r["bootstrap_samples"], r["bootstrap_seed"]) for r in saved} == {(0.9, 200, 3)}
    report = (tmp_path / "run/eval/report.md").read_text()
    assert "significant" in report and "| 90% CI |" in report and "[90% CI]" in report and "95%" not in report
    assert "200 resamples, seed 3" in report
    cached = list((tmp_path / "eval_base").glob("*/predictions.jsonl"))
    assert len(cached) == 1
    # a second adapter on the same base reuses the cached base scores (not re-scored: no samples.jsonl)
    model2 = _lora(tiny_model("tiny_llama"), perturb=True)
    evaluate(model2, tok, cfg, DataConfig(), tmp_path / "run2", label="adapter", loader=fixture_loader)
    assert not (tmp_path / "run2/eval/base/samples.jsonl").exists()
    assert (tmp_path / "run2/eval/base/predictions.jsonl").is_file()
    # a different base (another random init) has another fingerprint, hence its own cache entry
    from medtune.eval.adapter_check import base_probe_logits, fingerprint

    other = fingerprint(base_probe_logits(_lora(tiny_model("tiny_llama", seed=3), perturb=True), tok))
    assert other != fingerprint(base_probe_logits(model, tok))


def test_base_cache_key_is_the_same_plain_or_under_an_adapter() -> None:
    from conftest import tiny_model

    from medtune.eval.adapter_check import base_probe_logits, fingerprint
    from medtune.eval.base_cache import base_cache_key

    tok, cfg = byte_tokenizer(), EvalConfig()
    plain = tiny_model("tiny_llama")
    key = base_cache_key(plain, fingerprint(base_probe_logits(plain, tok)), [], cfg)
    wrapped = _lora(tiny_model("tiny_llama"), perturb=True)  # same init, trained-looking adapter
    assert base_cache_key(wrapped, fingerprint(base_probe_logits(wrapped, tok)), [], cfg) == key
    other = tiny_model("tiny_llama", seed=3)
    assert base_cache_key(other, fingerprint(base_probe_logits(other, tok)), [], cfg) != key
    # padding changes bf16 scores: another eval batch size is another base entry
    batch = EvalConfig(batch_size=cfg.batch_size * 2)
    assert base_cache_key(plain, fingerprint(base_probe_logits(plain, tok)), [], batch) != key
