"""Watch sets score the gold letter like a full forward and like the eval stage; the base scores are cached."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from fixtures.eval.lm import byte_tokenizer, fixture_loader, register_fixture_tasks

from medtune.config import EvalConfig
from medtune.eval import watch
from medtune.eval.logprobs import length_batches
from medtune.eval.ranks import Ranks, assign_shares
from medtune.eval.scoring import score
from medtune.eval.tasks import build_task_data, write_task_files
from medtune.eval.watch_stats import group_change, watch_groups, watch_metrics


def _lora(arch: str = "tiny_llama") -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(arch, attn_implementation="sdpa"), LoraConfig(r=4, target_modules=["q_proj"]))
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.3)
    return model.eval()


def _sets(monkeypatch: pytest.MonkeyPatch, limit: int = 9, limits: dict | None = None) -> list[watch.WatchSet]:
    register_fixture_tasks(monkeypatch)
    tok = byte_tokenizer()
    return watch.build_watch_sets(["fx_ko", "fx_en"], limit, limits or {}, None, tok, seed=0, loader=fixture_loader)


@pytest.mark.parametrize(("arch", "batch_size"), [("tiny_llama", 4), ("tiny_gemma3", 3)])
def test_gold_letter_scores_equal_a_full_forward_and_the_eval_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, batch_size: int
) -> None:
    """Every option letter's log-probability equals a full-vocabulary forward over the prompt alone, and the gold
    letter's equals the eval stage's gold_ll_letter (lm-eval's requests) on the same questions."""
    sets = _sets(monkeypatch)
    model = _lora(arch)
    got = watch.score_watch(model, sets, batch_size)
    for s in sets:
        for prompt, options, lls in zip(s.prompts, s.options, got[s.name], strict=True):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
            expected = torch.log_softmax(logits, -1)[options].tolist()
            assert lls == pytest.approx(expected, abs=1e-4)
    tasks = build_task_data(["fx_ko", "fx_en"], None, limit=9, seed=0, loader=fixture_loader)
    assert [d["id"] for t in tasks for d in t.docs] == [i for s in sets for i in s.ids]  # eval.limit's subset
    names = write_task_files(tasks, tmp_path / "tasks", "letter", 0)
    rows = score(model, byte_tokenizer(), tasks, tmp_path / "tasks", names, "letter", 4, tmp_path / "out")
    eval_gold = {(r["task"], r["id"]): r["gold_ll_letter"] for r in rows}
    for s in sets:
        for qid, gold, lls in zip(s.ids, s.golds, got[s.name], strict=True):
            assert lls[gold] == pytest.approx(eval_gold[(s.name, qid)], abs=1e-4), qid


def _random_sets(sizes: tuple[int, ...] = (5, 8, 3), vocab: int = 512) -> list[watch.WatchSet]:
    """Sets of random prompts (uneven counts, lengths 4 to 60 tokens: sliding windows and padding both matter)."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for k, n in enumerate(sizes):
        lengths = torch.randint(4, 61, (n,), generator=gen).tolist()
        prompts = [tuple(torch.randint(3, vocab, (m,), generator=gen).tolist()) for m in lengths]
        options = [[10 + k, 11 + k, 12 + k, 13 + k]] * n
        out.append(watch.WatchSet(f"s{k}", "ko", "medical", [str(i) for i in range(n)], prompts, options, [0] * n))
    return out


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_token_budget_batches_score_as_the_fixed_rows_and_a_full_forward(arch: str) -> None:
    """Pooled, longest-first forwards filled to a token budget give the scores of the earlier 16-question batches
    and of one full-vocabulary forward per question (float32: within 1e-5 nats), at every budget."""
    sets, model = _random_sets(), _lora(arch)
    rows16 = watch.score_watch(model, sets, 16)  # the scorer before token budgets: 16 questions per forward
    direct = {}
    for s in sets:
        with torch.no_grad():
            logits = [model(input_ids=torch.tensor([p])).logits[0, -1].float() for p in s.prompts]
        direct[s.name] = [torch.log_softmax(x, -1)[o].tolist() for x, o in zip(logits, s.options, strict=True)]
    for budget in (1, 100, 257, 10_000):  # one question per forward ... every question in one
        got = watch.score_watch(model, sets, None, max_tokens=budget)
        for s in sets:
            for new, old, full in zip(got[s.name], rows16[s.name], direct[s.name], strict=True):
                assert new == pytest.approx(old, abs=1e-5) and new == pytest.approx(full, abs=1e-5)


def test_all_sets_share_the_forwards() -> None:
    """The sets' questions are pooled: as many forwards as the pooled prompts' token budget needs, not per set."""
    sets, forwards = _random_sets(), []
    ranks = Ranks(on_forward=lambda: forwards.append(1))
    watch.score_watch(_lora("tiny_gemma3"), sets, None, ranks, max_tokens=10_000)
    assert len(forwards) == 1
    forwards.clear()
    watch.score_watch(_lora("tiny_gemma3"), sets, None, ranks, max_tokens=200)
    pooled = [len(p) for s in sets for p in s.prompts]
    per_set = sum(len(length_batches([len(p) for p in s.prompts], None, 200)) for s in sets)
    assert len(forwards) == len(length_batches(pooled, None, 200)) < per_set


class _OneRankOfThree(Ranks):
    """Rank `rank` of three, in one process: `gather` keeps this rank's scores and fills the others' with None."""

    def __init__(self, rank: int, n_requests: list[int]) -> None:
        super().__init__(rank, 3)
        self.sizes, self.mine = n_requests, None

    def gather(self, obj: list) -> list:
        self.mine = obj
        return [obj if r == self.rank else [None] * n for r, n in enumerate(self.sizes)]


def test_uneven_shares_over_ranks_score_as_one_process() -> None:
    """16 questions over 3 ranks (uneven shares): each rank's token-budget forwards give the one-process scores."""
    sets, model = _random_sets(), _lora("tiny_gemma3")
    one = watch.score_watch(model, sets, 16)
    flat = [q for s in sets for q in one[s.name]]
    requests = [(o, p, ()) for s in sets for p, o in zip(s.prompts, s.options, strict=True)]
    shares = assign_shares(requests, 3)
    assert len({len(share) for share in shares}) > 1  # uneven
    for rank in range(3):
        ranks = _OneRankOfThree(rank, [len(share) for share in shares])
        got = watch.score_watch(model, sets, None, ranks, max_tokens=120)
        mine = [q for s in sets for q in got[s.name] if q is not None]
        assert len(mine) == len(shares[rank]) and ranks.mine == mine
        for i, lls in zip(shares[rank], mine, strict=True):
            assert lls == pytest.approx(flat[i], abs=1e-5)


def test_subset_sizes_follow_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    sets = _sets(monkeypatch, limit=5, limits={"fx_en": 3})
    assert [len(s.ids) for s in sets] == [5, 3]
    again = _sets(monkeypatch, limit=5)
    assert again[0].ids == sets[0].ids and again[0].fingerprint() == sets[0].fingerprint()  # seeded


def test_base_scores_are_cached_and_keyed_by_the_questions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Scored with the adapter off once; the second run reads the entry; a different subset is another entry."""
    caplog.set_level(logging.INFO)
    sets = _sets(monkeypatch, limit=4)
    model = _lora()
    cfg = EvalConfig(cache_dir=str(tmp_path / "cache"), watch_batch_size=2)
    first = watch.base_watch_scores(model, byte_tokenizer(), sets, cfg, Ranks())
    with model.disable_adapter():
        assert first == watch.score_watch(model, sets, 2)  # the base, not the adapter
    assert first != watch.score_watch(model, sets, 2)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("scored again instead of reading the cache")

    monkeypatch.setattr(watch, "score_watch", fail)
    assert watch.base_watch_scores(model, byte_tokenizer(), sets, cfg, Ranks()) == first
    assert "reused" in caplog.text
    with pytest.raises(AssertionError, match="scored again"):
        watch.base_watch_scores(model, byte_tokenizer(), _sets(monkeypatch, limit=5), cfg, Ranks())
    assert len(list((tmp_path / "cache").glob("watch-*/predictions.jsonl"))) == 1


def test_the_base_entry_is_keyed_by_the_batching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch shapes change bf16 results: another token budget or row cap is another cache entry."""
    sets, model = _sets(monkeypatch, limit=4), _lora()
    for size, tokens in ((None, 8192), (None, 64), (2, 64), (None, 8192)):
        cfg = EvalConfig(cache_dir=str(tmp_path / "cache"), watch_batch_size=size, watch_batch_tokens=tokens)
        watch.base_watch_scores(model, byte_tokenizer(), sets, cfg, Ranks())
    assert len(list((tmp_path / "cache").glob("watch-*/predictions.jsonl"))) == 3


@pytest.mark.parametrize(
    "damage", ["torn line", "lines lost", "entry.json missing, torn line", "entry.json missing, lines lost"]
)
def test_a_damaged_base_entry_is_scored_again_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """The watch's base entry is verified as the evaluation's is (base_cache.score_base): a torn or short entry is
    not read back as scores; the base is scored again (one warning naming the entry) and the entry replaced."""
    sets = _sets(monkeypatch, limit=4)
    model = _lora()
    cfg = EvalConfig(cache_dir=str(tmp_path / "cache"), watch_batch_size=2)
    first = watch.base_watch_scores(model, byte_tokenizer(), sets, cfg, Ranks())
    (entry,) = (tmp_path / "cache").glob("watch-*")
    whole = (entry / "predictions.jsonl").read_text()
    lines = whole.splitlines(keepends=True)
    assert [p.name for p in sorted(entry.iterdir())] == ["entry.json", "predictions.jsonl"] and len(lines) == 8
    if damage.startswith("entry.json missing"):
        (entry / "entry.json").unlink()
    kept = [*lines[:3], lines[3][:25]] if damage.endswith("torn line") else lines[:5]
    (entry / "predictions.jsonl").write_text("".join(kept))
    scored = []
    real = watch.score_watch
    monkeypatch.setattr(watch, "score_watch", lambda *args: scored.append(1) or real(*args))
    caplog.clear()
    assert watch.base_watch_scores(model, byte_tokenizer(), sets, cfg, Ranks()) == first and scored == [1]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(entry) in warnings[0] and "damaged" in warnings[0], warnings
    assert (entry / "predictions.jsonl").read_text() == whole  # replaced by a whole one, and reused from now on
    assert watch.base_watch_scores(model, byte_tokenizer(), sets, cfg, Ranks()) == first and scored == [1]


def _constructed(values: dict[str, list[float]], gold: int = 0) -> dict[str, list[list[float]]]:
    """Scores whose gold option (index `gold`) has the given log-probabilities; the other option gets -1.8."""
    return {name: [[v, -1.8] if gold == 0 else [-1.8, v] for v in vs] for name, vs in values.items()}


def test_changes_from_base_pool_languages_and_leave_general_probes_alone() -> None:
    sets = [
        watch.WatchSet("a_ko", "ko", "medical", ["1", "2"], [(1,), (2,)], [[5, 6], [5, 6]], [0, 0]),
        watch.WatchSet("b_ko", "ko", "medical", ["3"], [(3,)], [[5, 6]], [0]),
        watch.WatchSet("g_en", "en", "general", ["4", "5"], [(4,), (5,)], [[5, 6], [5, 6]], [0, 0]),
    ]
    base = _constructed({"a_ko": [-2.0, -2.0], "b_ko": [-2.0], "g_en": [-2.0, -2.0]})
    run = _constructed({"a_ko": [-1.5, -2.5], "b_ko": [-0.5], "g_en": [-3.0, -0.5]})
    assert watch_groups(sets) == {"a_ko": ["a_ko"], "b_ko": ["b_ko"], "g_en": ["g_en"], "lang/ko": ["a_ko", "b_ko"]}
    out = watch_metrics(sets, base, run, accuracy=True)
    assert out["watch/lang/ko/delta_gold_ll"] == pytest.approx(np.mean([0.5, -0.5, 1.5]))
    assert out["watch/lang/ko/n"] == 3 and "watch/lang/en/delta_gold_ll" not in out  # the probe is not pooled
    assert out["watch/g_en/delta_gold_ll"] == pytest.approx(0.25)
    assert out["watch/worst_lang/delta_gold_ll"] == out["watch/lang/ko/delta_gold_ll"]
    assert out["watch/a_ko/acc"] == 0.5 and out["watch/a_ko/delta_acc_pp"] == pytest.approx(50.0)  # -1.5 > -1.8
    test = group_change(sets, base, run, "lang:ko", "gold_ll", level=0.9)
    assert test["ci_low"] <= test["delta"] <= test["ci_high"] and test["base"] == -2.0
    same = group_change(sets, base, base, "a_ko", "gold_ll", level=0.95)
    assert (same["delta"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
