"""The search from plan to search.md, with a fake runner that writes what a run writes (a planted effect, no torch):
resume, failed jobs, "no safe share", the confirming run, the command line's errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from medtune.config import ConfigError
from medtune.config.search import compose_search
from medtune.search.cli import main
from medtune.search.plan import Job
from medtune.search.run import search

SETS = {"ja_exam": "ja", "sample_en": "en", "sample_ko": "ko"}


def _write_rows(path: Path, deltas: dict[str, np.ndarray], base: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for task, lang in SETS.items():
        question = np.random.default_rng(len(task)).normal(-1.5, 0.3, 40)  # the base, the same in every run
        for i, ll in enumerate(question + (0 if base else deltas[task])):
            rows.append({"task": task, "id": f"{task}:{i}", "language": lang, "domain": "medical",
                         "gold_ll_letter": float(ll), "correct": bool(ll > -1.4)})  # fmt: skip
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def planted(ko_of_share=lambda s: 0.02 - 0.3 * s, fail: str | None = None):
    """A runner: ja gains 0.5 x share, en holds, ko follows `ko_of_share`; the job named `fail` dies unrecorded."""
    calls: list[str] = []

    def run(job: Job, log_path: Path, timeout_s: float | None) -> int:
        calls.append(job.name)
        log_path.write_text(" ".join(job.argv))
        if job.name == fail:
            return 1
        rng = np.random.default_rng(job.seed + 10)
        mean = {"ja_exam": 0.5 * job.share, "sample_en": 0.0, "sample_ko": ko_of_share(job.share)}
        deltas = {t: m + rng.normal(0, 0.005) + rng.normal(0, 0.03, 40) for t, m in mean.items()}
        _write_rows(job.run_dir / "eval" / "base", deltas, base=True)
        _write_rows(job.run_dir / "eval" / "adapter", deltas, base=False)
        summary = {"run/status": "ok", "trained_mix/ja/share_tokens": job.share}
        (job.run_dir / "summary.json").write_text(json.dumps(summary))
        return 0

    run.calls = calls  # type: ignore[attr-defined]
    return run


def _cfg(tmp_path: Path, *extra: str):
    return compose_search(["+search=ratio_ja", f"search.dir={tmp_path / 's'}", "search.bootstrap_samples=300", *extra])


def test_the_recommendation_stays_below_the_planted_crossing(tmp_path: Path) -> None:
    runner = planted()
    result = search(_cfg(tmp_path), [], "ratio_ja", runner)
    assert len(runner.calls) == 10 and result.n_ok == 10 and not result.failed
    assert result.rec.share is not None and 0.1 < result.rec.share < 0.2334  # ko crosses -0.05 at 0.233
    text = (tmp_path / "s" / "search.md").read_text()
    assert f"**Recommended**: {result.ratio_at(result.rec.share)} (ja share {result.rec.share:.3f})" in text
    assert result.ratio_at(0.5) == "en:ko:ja=0.333333:0.166667:0.5"  # en and ko keep own_data_ja's 2:1
    assert "protected lang:ko" in text and "| 0.100 | 2 | 0.100 |" in text
    record = json.loads((tmp_path / "s" / "search.json").read_text())
    assert record["recommended_share"] == result.rec.share and len(record["by_share"]) == 5
    argv = (tmp_path / "s" / "logs" / "ja0.300_seed1.log").read_text().split()
    assert "+experiment=own_data_ja" in argv and "seed=1" in argv and "trainer.max_steps=20" in argv
    assert "data_mix.ratio='en:ko:ja=0.466667:0.233333:0.3'" in argv


def test_a_second_call_runs_only_what_did_not_finish(tmp_path: Path) -> None:
    first = planted(fail="ja0.500_seed1")
    result = search(_cfg(tmp_path), [], "ratio_ja", first)
    assert result.n_ok == 9 and list(result.failed) == ["ja0.500_seed1"]  # recorded, not fatal
    assert "## Failed runs" in (tmp_path / "s" / "search.md").read_text()
    (tmp_path / "s" / "runs" / "ja0.100_seed0" / "summary.json").unlink()  # a run killed before its end
    again = planted()
    result = search(_cfg(tmp_path), [], "ratio_ja", again)
    assert sorted(again.calls) == ["ja0.100_seed0", "ja0.500_seed1"] and result.n_ok == 10
    third = planted()
    search(_cfg(tmp_path), [], "ratio_ja", third)
    assert third.calls == []


def test_parallel_runs_that_many_jobs_at_once(tmp_path: Path) -> None:
    """search.parallel=3: three proxy runs wait on one barrier, which only three at once can pass; then the rest."""
    barrier, inner = threading.Barrier(3, timeout=20), planted()

    def runner(job: Job, log_path: Path, timeout_s: float | None) -> int:
        if job.share == 0.1 or job.name == "ja0.300_seed0":
            barrier.wait()  # BrokenBarrierError (the search stops) unless all three are running together
        return inner(job, log_path, timeout_s)

    result = search(_cfg(tmp_path, "search.parallel=3"), [], "ratio_ja", runner)
    assert result.n_ok == 10 and sorted(result.ran) == sorted(inner.calls)
    with pytest.raises(ConfigError, match=r"search\.parallel=0 must be > 0"):
        _cfg(tmp_path, "search.parallel=0")


def test_other_steps_in_the_same_folder_are_refused(tmp_path: Path) -> None:
    search(_cfg(tmp_path, "search.shares=[0.2,0.6]", "search.seeds=[0]"), [], "ratio_ja", planted())
    with pytest.raises(ConfigError, match="ran with steps=20, now 5"):
        search(_cfg(tmp_path, "search.shares=[0.2,0.6]", "search.seeds=[0]", "search.steps=5"), [], "x", planted())


def test_an_impossible_margin_says_no_safe_share(tmp_path: Path) -> None:
    result = search(_cfg(tmp_path, "search.confirm=true"), [], "ratio_ja", planted(lambda s: -0.3))
    assert result.rec.share is None and result.confirmed is None
    text = (tmp_path / "s" / "search.md").read_text()
    assert "**No safe share**" in text and "Confirming run" not in text


def test_confirm_trains_at_the_recommendation_with_full_steps(tmp_path: Path) -> None:
    runner = planted()
    result = search(_cfg(tmp_path, "search.confirm=true"), ["trainer.max_steps=40"], "ratio_ja", runner)
    name = f"confirm_ja{result.rec.share:.3f}_seed0"
    assert runner.calls[-1] == name and result.confirmed["status"] == "ok"
    argv = (tmp_path / "s" / "logs" / f"{name}.log").read_text().split()
    assert "trainer.max_steps=40" in argv and "trainer.max_steps=20" not in argv
    predicted, measured, low, high = result.confirmed["groups"]["ja_exam"]
    assert low <= measured <= high and abs(predicted - measured) < 0.05
    assert "| ja_exam |" in (tmp_path / "s" / "search.md").read_text()


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["search=ratio_ja", "search.shares=[0.5,1.5]", f"search.dir={tmp_path}"]) == 2
    assert "search.shares has [1.5]" in capsys.readouterr().err
    assert main(["model=tiny_llama"]) == 2
    assert "choose a search: search=<name>" in capsys.readouterr().err
    assert main(["search=ratio_ja", "search.protect=[lang:fr]", f"search.dir={tmp_path}"]) == 2
    assert "search.protect names lang:fr" in capsys.readouterr().err
    assert main(["search=ratio_ja", "search.vary=de", f"search.dir={tmp_path}"]) == 2
    assert "search.vary='de' is not a language of the data mix" in capsys.readouterr().err
