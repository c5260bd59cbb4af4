"""The record of what was trained (trained_mix/...), beside the planned mix; mix checks before any model loads."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from medtune.config import ConfigError, DataMixConfig, PackingConfig, register_configs, to_train_config
from medtune.data.packing import build_batches
from medtune.training import recipe as recipe_module
from medtune.training.batches import DataPipeline, load_pools
from medtune.training.trained_mix import batch_counts, trained_record

CONF = REPO / "medtune" / "conf"
TINY = ["model=tiny_llama", "trainer.device=cpu", "trainer.progress_bar=false", "packing.max_seq_len=1024"]
register_configs()


def _example(n: int, tag: int) -> dict:
    return {"input_ids": [tag] * n, "labels": [tag] * n, "id": f"r{tag}"}


def test_batch_counts_count_each_row_once_and_its_trained_tokens() -> None:
    """Packed rows of 8 tokens; a 12-token example is cut in two pieces (split_long): one row, 12 tokens."""
    examples = [_example(12, 1), _example(3, 2), _example(5, 3), _example(2, 4)]
    specs = ["en/a:train", "en/a:train", "ko/b:train", "ko/b:train"]
    packing = PackingConfig(mode="packed", max_seq_len=8, split_long=True)
    batches = build_batches(packing, examples, micro_batch_size=1, pad_id=0, seed=0)
    counts = batch_counts(batches, specs)
    assert counts == Counter(
        {("en/a:train", "examples"): 2, ("en/a:train", "tokens"): 15, ("ko/b:train", "examples"): 2,
         ("ko/b:train", "tokens"): 7}
    )  # fmt: skip
    first = batch_counts(batches[:1], specs)  # part of a pass: what those micro-batches hold, no more
    assert sum(n for (_, kind), n in first.items() if kind == "tokens") == int((batches[0]["document_ids"] >= 0).sum())


def test_the_record_counts_whole_passes_and_the_pass_in_progress() -> None:
    examples = [_example(4, i) for i in range(6)]
    specs = ["en/a:train"] * 4 + ["ko/b:train"] * 2
    packing = PackingConfig(mode="none")

    def make(items: list[dict], epoch: int) -> list[dict]:
        return build_batches(packing, items, micro_batch_size=2, pad_id=0, seed=0, epoch=epoch)

    pipeline = DataPipeline(make, examples, [], 0, 1, 0, train_specs=specs)
    pipeline.pass_counts = batch_counts(pipeline.all_batches(0), specs)
    report = {"data_mix/languages": "en,ko", "data/micro_batches_per_epoch": 3}
    report |= {"data_mix/en/a:train/requested_share": 0.5, "data_mix/ko/b:train/requested_share": 0.5}
    partial = batch_counts(pipeline.all_batches(2)[:1], specs)
    record = trained_record(pipeline, {"epoch": 2, "batch": 1}, report)
    assert record["trained_mix/passes"] == pytest.approx(2 + 1 / 3) and record["trained_mix/micro_batches"] == 7
    assert record["trained_mix/en/examples"] == 8 + partial[("en/a:train", "examples")]
    assert record["trained_mix/ko/b:train/tokens"] == 16 + partial[("ko/b:train", "tokens")]
    assert record["trained_mix/examples"] == 12 + 2 and record["trained_mix/tokens"] == 48 + 8
    assert record["trained_mix/en/share_examples"] + record["trained_mix/ko/share_examples"] == pytest.approx(1.0)


def _dict_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=[*TINY, *overrides])


@pytest.mark.timeout(600)
def test_a_short_run_records_what_it_trained_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """2 steps of one row each take 2 of the mix's micro-batches: summary.json holds the trained rows and tokens per
    language and source beside the planned ones, and WARNINGs say the run trained part of its mix."""
    from medtune.training.run import run

    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(tmp_path / "cache"))
    dict_cfg = _dict_cfg("trainer.max_steps=2", "trainer.micro_batch_size=1", "eval=none", "logger=jsonl")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with caplog.at_level(logging.INFO):
        run(to_train_config(dict_cfg), dict_cfg, run_dir, multirun=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trained_mix/micro_batches"] == 2 and summary["trained_mix/passes"] == pytest.approx(
        summary["train/epoch"]
    )
    assert 0 < summary["trained_mix/examples"] < summary["data_mix/train_examples"]  # packed: rows hold several
    assert summary["trained_mix/en/examples"] + summary["trained_mix/ko/examples"] == summary["trained_mix/examples"]
    for lang in ("en", "ko"):
        assert f"trained_mix/{lang}/tokens" in summary and f"data_mix/{lang}/tokens" in summary
        assert summary[f"trained_mix/{lang}/sample_{lang}:train/examples"] <= summary[f"data_mix/{lang}/examples"]
    assert sum(summary[f"trained_mix/{lang}/tokens"] for lang in ("en", "ko")) == summary["trained_mix/tokens"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("trainer.max_steps=2 takes 2 of the" in w for w in warnings)  # said at the start
    assert any(w.startswith("the run trained 2 of the") and "not the planned" in w for w in warnings)
    assert "trained mix by examples: 0.065 passes" in caplog.text and "planned share" in caplog.text


@pytest.mark.timeout(300)
def test_an_infeasible_budget_stops_before_the_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """data_mix.budget=100000 on the sample: the mix check runs before the model is built (build_trainable patched
    to fail the test), the error is one line without a traceback, and summary.json records it."""
    from medtune.training.run import run

    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(tmp_path / "cache"))
    built: list[object] = []
    monkeypatch.setattr(recipe_module, "build_trainable", lambda *args: built.append(args) or pytest.fail("built"))
    dict_cfg = _dict_cfg("data_mix.budget=100000", "eval=none", "logger=jsonl")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    started = time.perf_counter()
    with (
        caplog.at_level(logging.DEBUG),
        pytest.raises(ConfigError, match=r"lower data_mix.budget \(at most [\d,]+ fits\)"),
    ):
        run(to_train_config(dict_cfg), dict_cfg, run_dir, multirun=False)
    assert not built and time.perf_counter() - started < 120
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # the entry logs the one line and exits 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run/status"] == "failed" and summary["run/failed_phase"] == "data"
    assert "data_mix.budget" in summary["run/error"]


@pytest.mark.timeout(300)
def test_the_command_exits_2_with_one_line_for_an_infeasible_budget(tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "medtune.train", *TINY, "data_mix.budget=100000", "eval=none", "logger=jsonl",
           f"hydra.run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out and "built tiny_llama" not in out
    errors = [line for line in out.splitlines() if "ERROR" in line or "invalid config" in line]
    assert len(errors) == 1 and "lower data_mix.budget" in errors[0], errors


def test_a_source_the_leakage_guard_empties_names_the_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.jsonl holding the test file's questions: every row is dropped; the error says the guard did it."""
    rows = "".join(
        json.dumps({"q": f"質問{i}は何か", "opts": ["あ", "い", "う", "え"], "ans": "A"}, ensure_ascii=False) + "\n"
        for i in range(6)
    )
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.jsonl").write_text(rows)
    (raw / "test.jsonl").write_text(rows)
    ds = "{format:mcq,language:ja,columns:{question:q,options:opts,answer:ans},"
    ds += "splits:{train:train.jsonl,test:test.jsonl}}"
    dict_cfg = _dict_cfg(f"data.data_dir={raw}", f"data.cache_dir={tmp_path / 'cache'}", f"+data.datasets.mine={ds}")
    cfg = to_train_config(dict_cfg)
    cfg.data_mix = DataMixConfig(sources={"en": {"sample_en:train": 1}, "ja": {"mine:train": 1}}, ratio="en:ja=1:1")
    with pytest.raises(ConfigError) as err:
        load_pools(cfg, {})
    message = str(err.value)
    assert "data_mix.sources.ja lists 'mine:train', but the leakage guard dropped all 6 of its rows" in message
    assert "6 repeat an evaluation question exactly" in message and "data.exclude_eval_overlap=false" in message
