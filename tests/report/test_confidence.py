"""A report at another confidence level recomputes every interval and flag from the predictions, or refuses."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_MODEL

from medtune.config import EvalConfig, ModelConfig, TrainConfig
from medtune.eval.forgetting import forgetting, forgetting_metrics
from medtune.eval.scoring import read_predictions
from medtune.eval.summary import summarise
from medtune.report.cli import main
from medtune.report.confidence import RECOMPUTED, stored_level
from medtune.report.sweep import forgetting_table, load_sweep
from medtune.report.write import build, figures

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sweep"
OK_RUNS = ("0_data_mix.ratio=0:1,seed=0", "1_data_mix.ratio=1:1,seed=0")


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A private copy of the fixture sweep: summaries at 95% (the default), with their predictions."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "sweep"))


def _expected(run_dir: Path, confidence: float, n_boot: int, seed: int) -> dict[str, float]:
    base = read_predictions(run_dir / "eval" / "base" / "predictions.jsonl")
    tuned = read_predictions(run_dir / "eval" / "adapter" / "predictions.jsonl")
    comparison = forgetting(base, tuned, confidence, n_boot, seed)
    return (
        summarise(tuned, "eval", confidence) | summarise(base, "base/eval", confidence) | forgetting_metrics(comparison)
    )


def _same(got: object, want: float) -> bool:
    return (math.isnan(want) and pd.isna(got)) or float(got) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_another_level_recomputes_every_interval_and_flag(sweep: Path, tmp_path: Path) -> None:
    # one run records its own bootstrap (as runs do now): the recomputation must reuse those resamples and seed
    summary_path = sweep / OK_RUNS[1] / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary |= {f"forgetting/{g}/bootstrap_{k}": v for g in ("ko", "en") for k, v in (("samples", 300), ("seed", 5))}
    summary_path.write_text(json.dumps(summary))
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--confidence", "0.9"]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("run")
    table = pd.read_csv(out / "forgetting.csv").set_index(["run", "lang"])
    for name, (n_boot, seed) in zip(OK_RUNS, [(2000, 0), (300, 5)], strict=True):
        stored = json.loads((sweep / name / "summary.json").read_text())
        want = _expected(sweep / name, 0.9, n_boot, seed)
        level_keys = [k for k in stored if k.endswith(("_ci_low", "_ci_high", "significant"))]
        assert level_keys and set(level_keys) <= set(want)  # every interval and flag of the summary is recomputed
        for key, value in want.items():
            assert _same(runs.loc[name, key], value), (name, key)
        # a 90% Wilson interval is narrower than the stored 95% one: the numbers changed, not only the label
        assert runs.loc[name, "eval/lang/ko/acc_ci_low"] > stored["eval/lang/ko/acc_ci_low"]
        assert runs.loc[name, RECOMPUTED] == 0.95 and runs.loc[name, "forgetting/ko/confidence"] == 0.9
        for lang in ("ko", "en"):
            row = table.loc[(name, lang)]
            assert row["ci_low_pp"] == pytest.approx(want[f"forgetting/{lang}/delta_pp_ci_low"])
            assert row["ci_high_pp"] == pytest.approx(want[f"forgetting/{lang}/delta_pp_ci_high"])
            assert bool(row["significant"]) == bool(want[f"forgetting/{lang}/significant"])
    md = (out / "report.md").read_text()
    assert "recomputed at 90% from their stored predictions" in md
    assert "[90% CI]" in md and "95%" not in md.replace("evaluated at 95%", "")


def test_another_level_without_predictions_is_refused(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (sweep / OK_RUNS[0] / "eval" / "adapter" / "predictions.jsonl").unlink()
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--confidence", "0.9"]) == 2
    message = capsys.readouterr().out
    assert OK_RUNS[0] in message and "computed at 95%" in message and "asked for 90%" in message
    assert "eval/<label>/predictions.jsonl" in message and "--confidence 0.95" in message
    assert not (out / "report.md").exists()
    assert main([str(sweep), "--out", str(out)]) == 0  # at the level the runs were evaluated at, nothing to redo


def test_stored_level_comes_from_the_summary_then_the_config_then_the_default() -> None:
    config = TrainConfig(model=ModelConfig(**TINY_MODEL), eval=EvalConfig(confidence=0.99))
    assert stored_level({"eval/lang/ko/confidence": 0.9}, config, "r") == 0.9
    assert stored_level({"eval/lang/ko/acc": 0.5}, config, "r") == 0.99
    assert stored_level({}, None, "r") == 0.95  # no config.yaml either: the only level such runs could have used
    with pytest.raises(ValueError, match="mixes confidence levels"):
        stored_level({"eval/a/confidence": 0.9, "forgetting/a/confidence": 0.95}, None, "r")


def test_forgetting_table_refuses_to_relabel(sweep: Path) -> None:
    with pytest.raises(ValueError, match="never relabelled"):
        forgetting_table(load_sweep(sweep), confidence=0.9)
    assert len(forgetting_table(load_sweep(sweep, 0.9), confidence=0.9)) == 4


@pytest.mark.parametrize(
    ("confidence", "label", "rounded", "alpha"), [(0.975, "97.5%", "98%", "0.025"), (0.999, "99.9%", "100%", "0.001")]
)
def test_every_label_states_the_level_exactly(
    sweep: Path, tmp_path: Path, confidence: float, label: str, rounded: str, alpha: str
) -> None:
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--confidence", str(confidence), "--reference", "1:1"]) == 0
    md = (out / "report.md").read_text()
    assert md.count(f"{label} ") >= 5 and rounded not in md and f"p < {alpha}" in md
    texts = []
    for fig in figures(build(sweep, confidence)).values():
        for ax in fig.axes:
            legend = ax.get_legend()
            texts += [ax.get_title(), *(t.get_text() for t in (legend.get_texts() if legend else []))]
    plotted = " ".join(texts)
    assert label in plotted and rounded not in plotted and f"p < {alpha}" in plotted


def test_a_level_outside_zero_one_is_refused(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--confidence", "95"])
    assert exit_info.value.code == 2 and "not a level in (0, 1)" in capsys.readouterr().err


def test_a_torn_prediction_line_is_one_line_naming_file_and_line(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A predictions.jsonl cut short mid-line (a full disk, a killed evaluation): the report stops with the file and
    line, exit 2, and writes nothing; skipping the run would relabel its stored intervals or drop it silently."""
    path = sweep / OK_RUNS[0] / "eval" / "adapter" / "predictions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    torn = "".join(lines[:2]) + lines[2][: len(lines[2]) // 2]
    path.write_text(torn, encoding="utf-8")
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--confidence", "0.9"]) == 2
    message = capsys.readouterr().out.strip()
    assert len(message.splitlines()) == 1 and message.startswith(f"error: {path}:3: not a JSON object")
    assert "python -m medtune.evaluate" in message
    assert path.read_text(encoding="utf-8") == torn and not (out / "report.md").exists()
