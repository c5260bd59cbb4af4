"""The sweep report: its numbers are the runs' own, failed jobs show up, plots and the notebook render."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, TINY_MODEL

from medtune.config import DataMixConfig, ModelConfig, TrainConfig
from medtune.report.cli import main
from medtune.report.plots import plot_efficiency
from medtune.report.sweep import (
    across_seeds,
    efficiency_table,
    forgetting_table,
    holm,
    load_sweep,
    mix_languages,
    mix_of,
)
from medtune.runtime.peak_memory import memory_metrics

FIXTURE = REPO / "tests" / "fixtures" / "sweep"
PNGS = ("accuracy_vs_share", "gold_ll_letter_vs_share", "gold_ll_text_vs_share", "forgetting", "efficiency")


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A private copy of the 2-ratio x 1-seed fixture sweep (plus one job that died)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "sweep"))


def _summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}


def test_report_numbers_equal_the_summaries(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    for stem in PNGS:
        png = (out / f"{stem}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, stem
    md = (out / "report.md").read_text()
    runs = pd.read_csv(out / "runs.csv").set_index("run")
    summaries = _summaries(sweep)
    assert len(summaries) == 2
    for name, summary in summaries.items():
        for key, value in summary.items():
            if isinstance(value, float):
                assert runs.loc[name, key] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, key)
        row = next(line for line in md.splitlines() if line.startswith(f"| `{name}` | ok"))
        for lang in ("ko", "en"):
            acc = summary[f"eval/lang/{lang}/acc"]
            low, high = summary[f"eval/lang/{lang}/acc_ci_low"], summary[f"eval/lang/{lang}/acc_ci_high"]
            assert f"{100 * acc:.2f} [{100 * low:.1f}, {100 * high:.1f}]" in row
            delta = summary[f"forgetting/{lang}/delta_pp"]
            f_row = next(line for line in md.splitlines() if line.startswith(f"| `{name}` |") and f"| {lang} |" in line)
            assert f"{delta:+.2f} [{summary[f'forgetting/{lang}/delta_pp_ci_low']:+.2f}," in f_row
            assert f"| {summary[f'forgetting/{lang}/p_mcnemar']:.3g} |" in f_row
    # One seed per ratio: the "mean across seeds" is the run's own value, and the base line is the base's.
    by_share = pd.read_csv(out / "by_share.csv")
    one = summaries["1_data_mix.ratio=1:1,seed=0"]
    got = by_share[(by_share.metric == "acc") & (by_share.lang == "ko") & (by_share.ratio == "1:1")]
    assert got["mean"].item() == pytest.approx(one["eval/lang/ko/acc"]) and got["n_seeds"].item() == 1
    assert f"| base model | - | {100 * one['base/eval/lang/ko/acc']:.2f} |" in md
    failed = next(line for line in md.splitlines() if line.startswith("| `2_data_mix.ratio=1:0,seed=0`"))
    assert "**FAILED**" in failed
    # Per task: the base's accuracy, then each ratio's accuracy (paired delta), from the summaries.
    zero = summaries["0_data_mix.ratio=0:1,seed=0"]
    law = next(line for line in md.splitlines() if line.startswith("| kormed_law |"))
    want = [f"{100 * zero['base/eval/kormed_law/acc']:.2f}"]
    for run in (zero, one):
        want.append(f"{100 * run['eval/kormed_law/acc']:.2f} ({run['forgetting/kormed_law/delta_pp']:+.2f})")
    assert [c.strip(" |") for c in law.split(" | ")][2:5] == want


def test_loaded_mix_seed_and_status(sweep: Path) -> None:
    df = load_sweep(sweep)
    assert df["ratio"].tolist() == ["0:1", "1:1", "1:0"]
    assert df["en_share"].tolist() == [0.0, 0.5, 1.0]
    assert df["status"].tolist() == ["ok", "ok", "failed"]
    assert df["seed"].tolist() == [0, 0, 0] and set(df["quantization"]) == {"nf4"}


def test_failed_summary_is_reported_not_plotted(sweep: Path, tmp_path: Path) -> None:
    run = sweep / "1_data_mix.ratio=1:1,seed=0"
    (run / "summary.json").write_text(json.dumps({"run/status": "failed", "run/error": "OutOfMemoryError: CUDA"}))
    assert main([str(sweep), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**FAILED**: OutOfMemoryError: CUDA" in md
    assert set(forgetting_table(load_sweep(sweep))["run"]) == {"0_data_mix.ratio=0:1,seed=0"}
    run = sweep / "0_data_mix.ratio=0:1,seed=0"
    long = "OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has a total capacity of 79 GiB " * 3
    (run / "summary.json").write_text(json.dumps({"run/status": "failed", "run/error": long}))
    assert main([str(sweep), "--out", str(tmp_path / "r2")]) == 0
    md = (tmp_path / "r2" / "report.md").read_text()
    assert "**FAILED**: OutOfMemoryError: CUDA out of memory |" in md  # first sentence in the table
    assert pd.read_csv(tmp_path / "r2" / "runs.csv")["run/error"].str.len().max() == len(long)  # all of it here


def test_forgetting_recomputed_from_predictions(sweep: Path) -> None:
    """Without forgetting keys in the summaries, the table comes from the prediction files and agrees."""
    expected = _summaries(sweep)
    for path in sweep.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in summary.items() if not k.startswith("forgetting/")}))
    table = forgetting_table(load_sweep(sweep))
    assert set(table["source"]) == {"predictions"} and len(table) == 4
    for _, row in table.iterrows():
        summary = expected[row["run"]]
        pre = f"forgetting/{row['lang']}/"
        assert row["delta_pp"] == pytest.approx(summary[pre + "delta_pp"])
        assert row["p_mcnemar"] == pytest.approx(summary[pre + "p_mcnemar"])
        assert row["ci_low_pp"] <= row["delta_pp"] <= row["ci_high_pp"]


def test_across_seeds_t_interval() -> None:
    df = pd.DataFrame({"ratio": ["1:1"] * 3 + ["1:0"], "en_share": [0.5] * 3 + [1.0], "m": [0.4, 0.5, 0.6, 0.7]})
    got = across_seeds(df, "m").set_index("ratio")
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert got.loc["1:1", "mean"] == pytest.approx(0.5) and got.loc["1:1", "n_seeds"] == 3
    assert got.loc["1:1", "ci_high"] - 0.5 == pytest.approx(half)
    assert math.isnan(got.loc["1:0", "ci_low"])  # one seed: no interval, not a fake one


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx([0.03, 0.06, float("nan"), 0.06], nan_ok=True)


def test_mix_of_reads_the_recorded_mix_then_the_config() -> None:
    config = TrainConfig(model=ModelConfig(**TINY_MODEL), data_mix=DataMixConfig(ratio="10:3"))
    assert mix_of({}, config) == ("10:3", pytest.approx(10 / 13))  # no record (older run): the config's weights
    recorded = {"data_mix/requested_ratio": "1:0", "data_mix/en/requested_share": 1.0}
    assert mix_of(recorded, config) == ("1:0", 1.0)  # the run's record of the mix it built wins
    assert mix_of({"data_mix/requested_ratio": "0:1:1"}, None) == ("0:1:1", 0.0)  # no English in the mix
    config.data_mix = DataMixConfig(weights={"en": 1, "ko": 0})
    assert mix_of({}, config) == ("1:0", 1.0)
    assert mix_of({}, None) == (None, None) and mix_of({}, TrainConfig(model=ModelConfig(**TINY_MODEL))) == (None, None)


def test_mix_languages_are_the_recorded_ones_then_the_configs(tmp_path: Path) -> None:
    run = tmp_path / "old"
    run.mkdir()
    mix = {"ratio": "en:ko:ja=1:1:1", "sources": {k: {f"sample_{k}:train": 1.0} for k in ("en", "ko", "ja")}}
    (run / "config.yaml").write_text(yaml.safe_dump({"model": TINY_MODEL, "data_mix": mix}))
    recorded = pd.DataFrame({"path": [str(tmp_path / "gone")], "data_mix/languages": ["ko,vi"]})
    assert mix_languages(recorded) == ["ko", "vi"]  # no config needed: the run recorded its mix
    older = pd.DataFrame({"path": [str(tmp_path / "gone"), str(run)], "data_mix/languages": ["ko,vi", None]})
    assert mix_languages(older) == ["ko", "vi", "en", "ja"]  # a run without the record: its config's languages


def test_a_bad_config_fails_a_finished_run_and_not_a_failed_one(sweep: Path, tmp_path: Path, capsys) -> None:
    run = sweep / "0_data_mix.ratio=0:1,seed=0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(config | {"data_mix": {"ratio": "ten:three"}}))
    assert main([str(sweep), "--out", str(tmp_path / "r")]) == 2
    assert f"error: {run / 'config.yaml'}: data_mix.ratio='ten:three'" in capsys.readouterr().out
    (run / "summary.json").write_text(json.dumps({"run/status": "failed", "run/error": "ConfigError: ratio"}))
    df = load_sweep(sweep).set_index("run")  # a job stopped by its own bad config: listed, failed, no mix
    assert df.loc[run.name, "status"] == "failed" and pd.isna(df.loc[run.name, "ratio"])


def test_efficiency_label_names_what_varies() -> None:
    df = pd.DataFrame(
        {
            "status": ["ok"] * 3,
            "ratio": ["1:1"] * 3,
            "model": ["m"] * 3,
            "quantization": ["nf4", "none", "nf4"],
            "packing": ["packed"] * 3,
            "train/useful_tokens_per_s": [1.0, 3.0, 2.0],
        }
    )
    eff = efficiency_table(df).set_index("config")
    assert eff.loc["quantization=nf4", "train/useful_tokens_per_s"] == 1.5
    assert eff.loc["quantization=nf4", "n_runs"] == 2


def test_efficiency_reads_the_memory_keys_training_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table and plot use the names `memory_metrics` gives a GPU run's training phase (no GPU needed)."""
    gib = 1024**3
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * gib)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 4 * gib)
    row = {**memory_metrics(torch.device("cuda"), "train"), "status": "ok", "ratio": "1:1", "model": "m"}
    eff = efficiency_table(pd.DataFrame([row, {**row, "ratio": "10:3"}])).set_index("config")
    assert eff.loc["ratio=1:1", "sys/train/peak_alloc_gib"] == 3.0
    assert eff.loc["ratio=10:3", "sys/train/peak_reserved_gib"] == 4.0
    fig = plot_efficiency(eff.reset_index())
    mem_ax = fig.axes[0]
    assert [round(p.get_height(), 2) for p in mem_ax.patches] == [4.0, 4.0, 3.0, 3.0]


def test_bad_inputs_fail_with_the_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().out
    run = tmp_path / "s" / "r"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{broken")
    assert main([str(tmp_path / "s")]) == 2
    assert "summary.json:1: not valid JSON" in capsys.readouterr().out


def test_wandb_option_skips_cleanly_offline(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    from medtune.report.wandb import publish_wandb
    from medtune.report.write import build

    assert not publish_wandb(build(sweep), sweep, tmp_path / "r")
    assert "--wandb: no W&B key" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


def test_notebook_runs_on_the_fixture(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = REPO / "notebooks" / "forgetting.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), (
        "notebooks/forgetting.ipynb has outputs: strip them (jupyter nbconvert --clear-output --inplace)"
    )
    assert yaml.safe_load(json.dumps(nb.metadata))["kernelspec"]["name"] == "python3"
    monkeypatch.setenv("MEDTUNE_SWEEP_DIR", str(sweep))
    nbclient.NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5
    assert any("3 runs, 1 failed" in o.get("text", "") for o in outputs)


def test_wandb_option_skips_cleanly_when_unreachable(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # loopback port that refuses every connection
    from medtune.report.wandb import publish_wandb
    from medtune.report.write import build

    assert not publish_wandb(build(sweep), sweep, tmp_path / "r", init_timeout_s=3.0)
    assert "--wandb: W&B is unreachable: skipped" in capsys.readouterr().out


def test_wandb_option_logs_plots_and_tables(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The publishing path itself, against a local (offline) W&B run standing in for the online one."""
    import medtune.runtime.wandb_run

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    real_init = medtune.runtime.wandb_run.init_wandb
    monkeypatch.setattr(
        medtune.runtime.wandb_run,
        "init_wandb",
        lambda cfg, config, run_dir, mode: real_init(cfg, config, run_dir, "offline"),
    )
    out = tmp_path / "r"
    assert main([str(sweep), "--out", str(out), "--wandb", "--reference", "1:1"]) == 0
    assert "--wandb: report run" in capsys.readouterr().out
    tables = {p.stem for p in (out / "wandb_report" / "tables").glob("*.json")}
    assert tables == {"forgetting", "efficiency", "runs", "contrast"}
    media = list((out / "wandb_report").glob("wandb/offline-run-*/files/media/images/*.png"))
    assert len(media) == len(PNGS)


def test_committed_mix_sweep_report_equals_its_run_directories(tmp_path: Path) -> None:
    """Every number in experiments/results/mix_sweep/report comes from the committed run summaries."""
    results = REPO / "experiments" / "results" / "mix_sweep"
    assert main([str(results / "runs"), "--out", str(tmp_path), "--reference", "1:1"]) == 0
    for name in ("by_share.csv", "forgetting.csv", "runs.csv", "efficiency.csv", "contrast.csv"):
        committed, fresh = pd.read_csv(results / "report" / name), pd.read_csv(tmp_path / name)
        pd.testing.assert_frame_equal(fresh, committed, check_exact=False, rtol=1e-9, obj=name)
    assert (tmp_path / "report.md").read_text().split("\n", 1)[1] == (
        results / "report" / "report.md"
    ).read_text().split("\n", 1)[1]
