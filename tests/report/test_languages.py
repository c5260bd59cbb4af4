"""The report covers every language the runs were evaluated on, not a fixed Korean-English pair."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_MODEL

from medtune.eval.forgetting import forgetting, forgetting_metrics
from medtune.eval.summary import summarise
from medtune.report.cli import main
from medtune.report.plots import lang_colors, lang_label
from medtune.report.write import build, figures

LANGS = ("en", "ko", "ja")
SOURCES = {"en": {"sample_en:train": 1.0}, "ko": {"sample_ko:train": 1.0}, "ja": {"ja_exam:train": 1.0}}


def predictions(seed: int, lift: float) -> tuple[list[dict], list[dict]]:
    """Base and fine-tuned prediction rows, 30 questions per language; the tuned model is right more often."""
    rnd = random.Random(seed)
    base, tuned = [], []
    for lang in LANGS:
        for i in range(30):
            row = {"task": f"exam_{lang}", "id": f"{lang}{i}", "language": lang, "domain": "medical", "n_choices": 4}
            ok = rnd.random() < 0.3
            base.append(row | {"correct": ok, "gold_ll_letter": -1.5, "gold_ll_text": -9.0})
            better = ok or rnd.random() < lift
            tuned.append(row | {"correct": better, "gold_ll_letter": -1.5 + lift, "gold_ll_text": -9.0 + lift})
    return base, tuned


def make_run(sweep: Path, name: str, ratio: str, seed: int, lift: float) -> None:
    run = sweep / name
    base, tuned = predictions(seed, lift)
    for label, rows in (("base", base), ("adapter", tuned)):
        (run / "eval" / label).mkdir(parents=True)
        (run / "eval" / label / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"run/status": "ok"} | summarise(tuned) | summarise(base, "base/eval")
    summary |= forgetting_metrics(forgetting(base, tuned, n_boot=200, seed=0))
    (run / "summary.json").write_text(json.dumps(summary))
    config = {"seed": seed, "model": TINY_MODEL, "data_mix": {"ratio": ratio, "sources": SOURCES}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for i, (ratio, lift) in enumerate((("en:ko:ja=2:1:1", 0.1), ("en:ko:ja=1:1:2", 0.3))):
        for seed in (0, 1):
            make_run(root, f"{i}_{seed}", ratio, seed, lift)
    return root


def test_tables_and_plots_show_every_language(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| run | status | en:ko:ja | en share % (weights) |" in md
    assert "| ko acc % [95% CI] | en acc % [95% CI] | ja acc % [95% CI] |" in md
    assert "ja mean [95% CI across seeds] (seeds)" in md and "[en / (en + ko + ja) by weight]" not in md
    shares = pd.read_csv(out / "runs.csv").set_index("run")["en_share"]
    assert shares["0_0"] == 0.5 and shares["1_0"] == 0.25  # English of all the weight
    table = pd.read_csv(out / "forgetting.csv")
    assert sorted(table["lang"].unique()) == ["en", "ja", "ko"] and len(table) == 12
    by_share = pd.read_csv(out / "by_share.csv")
    assert set(by_share[by_share.metric == "acc"]["lang"]) == {"ko", "en", "ja"}
    rep = build(sweep)
    figs = figures(rep)
    for stem in ("accuracy_vs_share", "gold_ll_letter_vs_share", "forgetting"):
        titles = [ax.get_title() for ax in figs[stem].axes]
        assert [t.split(":")[0] for t in titles] == ["Korean (ko)", "English (en)", "Japanese (ja)"], stem
        assert figs[stem].axes[0].get_xlabel().endswith("[en / (en + ko + ja) by weight]")
    lines = figs["accuracy_vs_share"].axes[2].get_lines()
    assert lang_colors("ja", rep.langs)[0] in {line.get_color() for line in lines}  # ja's own colour


def test_another_level_recomputes_every_language_from_predictions(sweep: Path) -> None:
    rep, wide = build(sweep, confidence=0.9), build(sweep, confidence=0.95)
    ja, ja95 = (r.forgetting[r.forgetting["lang"] == "ja"].reset_index(drop=True) for r in (rep, wide))
    assert len(ja) == 4 and (ja["ci_low_pp"] <= ja["delta_pp"]).all()
    width, width95 = ja["ci_high_pp"] - ja["ci_low_pp"], ja95["ci_high_pp"] - ja95["ci_low_pp"]
    assert (width <= width95).all() and (width < width95).any()  # restated at 0.9: narrower (0-wide ones stay 0)
    assert rep.runs["eval/lang/ja/confidence"].eq(0.9).all()


def test_each_language_gets_a_colour_of_its_own() -> None:
    langs = ["ko", "en", "ja", "vi", "de", "zh-Hant", "fr", "th", "id", "es"]
    colors = [lang_colors(lang, langs) for lang in langs]
    assert colors[0] == ("#c0392b", "#e6a39b") and colors[1] == ("#1f5fa8", "#9dbbe0")  # the paper's, unchanged
    assert len({mean for mean, _ in colors}) == len(langs) and len({run for _, run in colors}) == len(langs)

    def rgb(color: str) -> tuple[int, ...]:
        return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))

    for i, (a, _) in enumerate(colors):
        for b, _ in colors[i + 1 :]:
            assert sum(abs(x - y) for x, y in zip(rgb(a), rgb(b), strict=True)) > 60, (a, b)
    assert lang_label("zh-Hant") == "Chinese (Hant) (zh-Hant)" and lang_label("vi") == "Vietnamese (vi)"
