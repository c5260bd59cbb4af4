"""Your own data end to end: the shipped Japanese example (an exam in JSONL, instructions in CSV) trained with the
built-in English and Korean sample at en:ko:ja = 2:1:1 by tokens, evaluated, compared with the base, reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_RUN

from medtune.data.cli import main as data_main
from medtune.report.cli import main as report_main
from medtune.report.write import build, figures

TINY = TINY_RUN
LANGS = {"en": 0.5, "ko": 0.25, "ja": 0.25}


def test_prepare_prints_the_example_by_language_and_role(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # no data_dir of datasets: the example and the sample ship with medtune (and the test stays hermetic)
    argv = ["prepare", "--data-dir", str(tmp_path), "--cache-dir", str(tmp_path), "--sources", "ja_exam",
            "ja_instructions", "sample_en"]  # fmt: skip
    assert data_main([*argv, "+experiment=own_data_ja"]) == 0
    out = capsys.readouterr().out
    table = [line.split() for line in out.splitlines()]
    rows = {tuple(cells[:4]): cells[4] for cells in table if len(cells) == 7}  # source split lang role records ...
    assert rows[("ja_exam", "train", "ja", "train")] == "48" and rows[("ja_exam", "test", "ja", "eval")] == "12"
    assert rows[("ja_instructions", "train", "ja", "train")] == "40"
    assert rows[("sample_en", "test", "en", "eval")] == "40"
    guarded = out.split("leakage guard (training candidates vs eval splits ", 1)[1].split(";", 1)[0]
    assert "'ja_exam:test'" in guarded and "ja_instructions" not in guarded  # a training-only set guards nothing


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One training run of the worked example on a tiny model (about 40 s on 2 CPU cores)."""
    root = tmp_path_factory.mktemp("own_data")
    run_dir = root / "run"
    env = {**os.environ, "MEDTUNE_CACHE_DIR": str(root / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "medtune.train", "+experiment=own_data_ja", *TINY, "trainer.max_steps=4",
           "logger=jsonl", "eval.limit=8", "eval.sanity=warn", f"hydra.run.dir={run_dir}",
           f"data.data_dir={root / 'no_datasets'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir, proc.stdout + proc.stderr


def test_the_realised_mix_is_two_one_one_in_tokens(run: tuple[Path, str]) -> None:
    run_dir, log = run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run/status"] == "ok" and summary["data_mix/unit"] == "tokens"
    assert summary["data_mix/languages"] == "en,ko,ja" and summary["data_mix/requested_ratio"] == "2:1:1"
    for lang, share in LANGS.items():
        assert summary[f"data_mix/{lang}/requested_share"] == share
        assert abs(summary[f"data_mix/{lang}/share_tokens"] - share) < 0.01, (
            lang,
            summary[f"data_mix/{lang}/share_tokens"],
        )
        # whole examples until the target: at most one example (< 600 byte tokens here) above the exact share
        assert 0 <= summary[f"data_mix/{lang}/tokens"] - summary[f"data_mix/{lang}/target_tokens"] < 600
    exam, instructions = (summary[f"data_mix/ja/{s}:train/tokens"] for s in ("ja_exam", "ja_instructions"))
    assert exam > 0 and instructions > 0 and abs(exam - instructions) < 600  # the language's share, split evenly
    assert "data mix by tokens: requested 2:1:1, achieved 2:" in log and "(en:ko:ja)" in log


def test_accuracy_and_forgetting_per_language(run: tuple[Path, str]) -> None:
    run_dir, _ = run
    summary = json.loads((run_dir / "summary.json").read_text())
    for lang in LANGS:
        for prefix in ("eval", "base/eval"):
            assert summary[f"{prefix}/lang/{lang}/n"] == 8 and 0 <= summary[f"{prefix}/lang/{lang}/acc"] <= 1
        assert f"forgetting/{lang}/delta_pp" in summary and f"forgetting/{lang}/gold_ll_letter_delta" in summary
    assert summary["eval/ja_exam/n"] == 8  # the held-out exam questions, a task of their own
    groups = {row["group"] for row in json.loads((run_dir / "eval" / "forgetting.json").read_text())}
    assert {"lang/en", "lang/ko", "lang/ja", "ja_exam"} <= groups
    tables = (run_dir / "eval" / "report.md").read_text()
    for lang in LANGS:
        assert tables.count(f"| lang/{lang} |") == 3  # base, adapter, and the paired table
    prompts = [json.loads(line) for line in (run_dir / "eval" / "tasks" / "ja_exam" / "test.jsonl").open()]
    assert prompts[0]["prompt"].startswith("質問: ") and prompts[0]["prompt"].endswith("\n答え:")


def test_the_report_and_its_plots_show_three_languages(run: tuple[Path, str], tmp_path: Path) -> None:
    run_dir, _ = run
    out = tmp_path / "report"
    assert report_main([str(run_dir), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| ko acc % [95% CI] | en acc % [95% CI] | ja acc % [95% CI] |" in md and "| en:ko:ja |" in md
    assert all(f"| {lang} | 8 |" in md for lang in LANGS)  # a forgetting row per language
    figs = figures(build(run_dir))
    for stem in ("accuracy_vs_share", "gold_ll_letter_vs_share", "gold_ll_text_vs_share", "forgetting"):
        assert [ax.get_title().split(":")[0] for ax in figs[stem].axes] == [
            "Korean (ko)", "English (en)", "Japanese (ja)"
        ], stem  # fmt: skip
        assert (out / f"{stem}.png").stat().st_size > 10_000
