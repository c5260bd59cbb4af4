"""Each ratio against a reference ratio: Welch interval by hand, table contents, CLI output and errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from medtune.eval.power import welch_mde
from medtune.report.cli import main
from medtune.report.contrast import contrast_table, welch

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sweep"


def test_welch_equals_the_hand_computed_interval() -> None:
    # diff -1; se = sqrt(1/3 + 1/3) = 0.81650; equal variances, so df = 4; t(0.975, 4) = 2.776445
    got = welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert got["diff"] == pytest.approx(-1.0)
    assert got["ci_low"] == pytest.approx(-1.0 - 2.776445 * 0.816497, abs=1e-5)
    assert got["ci_high"] == pytest.approx(-1.0 + 2.776445 * 0.816497, abs=1e-5)
    assert got["p_welch"] == pytest.approx(0.28786, abs=1e-4)  # t = 1.2247 on 4 df, two-sided


def test_welch_unequal_variances_match_scipy() -> None:
    a, b = [20.2, 20.6, 20.3, 19.1], [25.9, 28.6, 29.5]
    got = welch(a, b, confidence=0.9)
    ref = stats.ttest_ind(a, b, equal_var=False)
    low, high = ref.confidence_interval(0.9)
    assert got["p_welch"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high), rel=1e-9)


def test_welch_with_one_seed_has_no_interval() -> None:
    got = welch([21.0], [20.0, 22.0])
    assert got["diff"] == pytest.approx(0.0) and math.isnan(got["ci_low"]) and math.isnan(got["p_welch"])


def _runs() -> pd.DataFrame:
    rows = []
    for ratio, share, accs in (("1:1", 0.5, [0.20, 0.22]), ("10:3", 10 / 13, [0.25, 0.27]), ("0:1", 0.0, [0.3])):
        rows += [{"ratio": ratio, "en_share": share, "status": "ok", "eval/lang/ko/acc": a} for a in accs]
    rows.append({"ratio": "10:3", "en_share": 10 / 13, "status": "failed", "eval/lang/ko/acc": 0.99})
    return pd.DataFrame(rows)


def test_contrast_table_compares_each_ratio_with_the_reference() -> None:
    table = contrast_table(_runs(), "1:1").set_index("ratio")
    assert list(table.index) == ["0:1", "10:3"]  # by English share, reference left out
    row = table.loc["10:3"]
    assert (row["n_seeds"], row["n_seeds_ref"]) == (2, 2)  # the failed run is not counted
    assert (row["mean"], row["mean_ref"], row["diff"]) == pytest.approx((26.0, 21.0, 5.0))
    assert row["unit"] == "pp" and row["metric"] == "eval/lang/ko/acc"
    assert math.isnan(table.loc["0:1", "ci_low"])  # one seed: a difference, no interval
    assert row["sd_pooled"] == pytest.approx(math.sqrt(2.0))  # both sides 1 pp apart: variance 2 pp^2
    assert row["mde"] == pytest.approx(welch_mde(math.sqrt(2.0), 2, 2)) and math.isnan(table.loc["0:1", "mde"])


def test_unknown_reference_names_the_ratios_present() -> None:
    with pytest.raises(ValueError, match=r"--reference '2:1'.*\['0:1', '1:1', '10:3'\]"):
        contrast_table(_runs(), "2:1")


def test_cli_writes_the_contrast(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = shutil.copytree(FIXTURE, tmp_path / "sweep")
    ratios = sorted(pd.read_csv(_report(sweep, tmp_path / "plain"))["ratio"].dropna().unique())
    reference = ratios[0]
    assert main([str(sweep), "--out", str(tmp_path / "r"), "--reference", reference]) == 0
    contrast = pd.read_csv(tmp_path / "r" / "contrast.csv")
    assert set(contrast["reference"]) == {reference} and reference not in set(contrast["ratio"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"## Against the {reference} mix" in md and "| Welch p | sd | MDE (80% power) |" in md
    assert "| McNemar p | Holm p | verdict | discordant % | MDE pp (80% power) |" in md
    forgetting = pd.read_csv(tmp_path / "r" / "forgetting.csv")
    assert (forgetting["discordance"] > 0).all() and (forgetting["mde_pp"] > 0).all()
    assert {"sd_pooled", "mde"} <= set(contrast.columns)
    capsys.readouterr()
    assert main([str(sweep), "--out", str(tmp_path / "bad"), "--reference", "7:7"]) == 2
    assert "--reference '7:7'" in capsys.readouterr().out and not (tmp_path / "bad").exists()


def _report(sweep: Path, out: Path) -> Path:
    assert main([str(sweep), "--out", str(out)]) == 0
    assert not (out / "contrast.csv").exists()  # only with --reference
    return out / "runs.csv"
