"""Checks that need no model stop a bad run before anything loads, with the key or file and the fix."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from conftest import dict_config as _dict_cfg

from medtune.config import ConfigError, DataConfig, TrainConfig, compose
from medtune.runtime.preflight import (
    check_dataset_files,
    check_known_keys,
    check_launch,
    check_per_layer_source,
    check_run,
    check_source,
    check_tasks,
    check_watch,
)


@pytest.fixture
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


def test_a_plus_key_nobody_reads_is_refused_with_the_near_name() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.max_step is not a setting.*Did you mean trainer\.max_steps"):
        check_known_keys(_dict_cfg(["+trainer.max_step=5"]))
    with pytest.raises(ConfigError, match=r"^lora\.rank is not"):
        check_known_keys(_dict_cfg(["+lora.rank=8"]))
    check_known_keys(_dict_cfg(["+experiment=mix_10_3"]))  # free-form dicts (data_mix.sources) are not checked


def test_unknown_source_split_and_eval_split_are_named(tmp_path: Path) -> None:
    cfg = compose([])
    with pytest.raises(ConfigError, match=r"data_mix\.sources.*unknown data source 'nope'"):
        check_source("nope:train", cfg.data, "data_mix.sources (nope:train)")
    with pytest.raises(ConfigError, match="sample_en has no split 'dev'"):
        check_source("sample_en:dev", cfg.data, "data_mix.sources (sample_en:dev)")
    with pytest.raises(ConfigError, match="is an evaluation split"):
        check_source("sample_en:test", cfg.data, "data_mix.sources (sample_en:test)", training=True)
    cfg.data_mix.sources = {"en": {"nope:train": 1.0}, "ko": {"sample_ko:train": 1.0}}
    with pytest.raises(ConfigError, match="unknown data source"):
        check_run(cfg)


def test_missing_data_dir_and_empty_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose([f"data.data_dir={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match=r"no raw files for source 'pubmedqa'.*MEDTUNE_DATA_DIR"):
        check_source("pubmedqa:train", cfg.data, "data_mix.sources (pubmedqa:train)")
    (tmp_path / "data" / "pubmedqa").mkdir(parents=True)
    (tmp_path / "data" / "pubmedqa" / "ori_pqal.json").write_text("")
    cfg = compose([f"data.data_dir={tmp_path / 'data'}"])
    with caplog.at_level(logging.WARNING, logger="medtune.runtime.preflight"):
        check_source("pubmedqa:train", cfg.data, "data_mix.sources (pubmedqa:train)")
    assert "ori_pqal.json is empty (0 bytes)" in caplog.text


def test_a_dataset_is_checked_like_a_built_in_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A data.datasets entry: its splits come from its prepared copy, the hint says how to add one, empty files warn."""
    folder = tmp_path / "raw" / "notes"
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"q": "頭痛の原因は?", "a": "緊張です。"}\n')
    (folder / "b.jsonl").write_text("")
    notes = {"format": "qa", "language": "ja", "path": "notes", "columns": {"question": "q", "answer": "a"}}
    data = DataConfig(data_dir=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"), datasets={"notes": notes})
    check_dataset_files(data)
    missing = r"notes has no split 'test'; its splits: \['train'\] \(declare it: splits, split_column or holdout\)\."
    with pytest.raises(ConfigError, match=missing):
        check_source("notes:test", data, "data_mix.sources.ja (notes:test)")
    with caplog.at_level(logging.WARNING, logger="medtune.runtime.preflight"):
        check_source("notes:train", data, "data_mix.sources.ja (notes:train)", language="ja")
    assert "b.jsonl is empty (0 bytes)" in caplog.text


def test_unknown_task_is_refused_before_training(tmp_path: Path) -> None:
    cfg = compose(["eval.tasks=[sample_ko,medqa_4opz]"])
    with pytest.raises(ConfigError, match=r"unknown tasks \['medqa_4opz'\] \(medqa_4opz -> medqa_4opt\?\)"):
        check_tasks(cfg)
    cfg = compose(["eval=medical", f"data.data_dir={tmp_path}"])  # the tasks' data is not here
    with pytest.raises(ConfigError, match=r"eval\.tasks \(kormedmcqa_doctor\): no raw files"):
        check_run(cfg)


def test_launch_must_fit_sharding(single_process: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="sharding=fsdp needs a torchrun launch"):
        check_launch(compose(["sharding=fsdp"]))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(ConfigError, match="2 processes but sharding=none"):
        check_launch(compose([]))
    check_launch(compose([]), replicas_ok=True)  # evaluation: a whole model per rank
    check_launch(compose(["sharding=fsdp"]))


def test_cuda_without_a_gpu(single_process: None) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match=r"trainer\.device=cuda but no CUDA GPU"):
        check_launch(compose(["trainer.device=cuda"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.save_every=-5", r"trainer\.save_every=-5 must be >= 0"),
        ("trainer.keep_checkpoints=-1", r"trainer\.keep_checkpoints=-1 must be >= 0"),
        ("trainer.eval_every=-1", r"trainer\.eval_every=-1 must be >= 0"),
        ("run_name=", "run_name='' must be a non-empty name"),
        ("run_name=a/b", "without slashes"),
    ],
)
def test_values_that_cannot_work(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compose([override])


@pytest.mark.timeout(120)
def test_a_bad_config_exits_2_without_importing_torch(tmp_path: Path) -> None:
    """The cost of a bad config is the config check, not torch (2 s and ~250 MB on import)."""
    for override in ("optim.lr=-1", "+trainer.max_step=5", "eval.tasks=[nope]", "trainer.resume=sometimes"):
        cmd = [sys.executable, "-X", "importtime", "-m", "medtune.train", override, f"hydra.run.dir={tmp_path}"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=100)
        assert proc.returncode == 2, proc.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line}
        assert "torch" not in imported, override
        assert "Traceback" not in proc.stderr and "invalid config" in proc.stdout + proc.stderr


def test_per_layer_loading_needs_a_local_checkpoint(tmp_path: Path) -> None:
    """sharding.load=per_layer reads safetensors from a folder: a hub id stops here, a folder or random weights pass,
    and sharding.load=whole keeps from_pretrained's hub download."""
    with pytest.raises(ConfigError, match=r"model\.path=meta-llama/Llama-3\.3-70B-Instruct is not a local directory"):
        check_per_layer_source(compose(["model=llama3_3_70b", "sharding=fsdp"]))
    for ok in (["sharding.load=whole"], ["model.init=random"], [f"model.path={tmp_path}"]):
        check_per_layer_source(compose(["model=llama3_3_70b", "sharding=fsdp", *ok]))


def test_a_good_config_passes(single_process: None) -> None:
    cfg = compose([])
    assert isinstance(cfg, TrainConfig)
    check_run(cfg, _dict_cfg([]))


def test_watch_sets_and_the_groups_that_act_on_them_are_checked_before_training(tmp_path: Path, data_dir: Path) -> None:
    """eval.watch names known tasks whose data is here; a guarded or kept lang:<language> needs a watched medical
    set in it (a general probe is not pooled into a language)."""
    with pytest.raises(ConfigError, match=r"eval\.watch names unknown tasks \['kormed_lav'\]"):
        check_watch(compose(["eval.watch=[kormed_lav]"]))
    with pytest.raises(ConfigError, match=r"eval\.watch \(kormed_law\): no raw files"):
        check_run(compose(["eval.watch=[kormed_law]", f"data.data_dir={tmp_path}"]))
    guard_en = ["eval.watch=[sample_ko,mmlu_general]", "trainer.guard.protect=[lang:en]", f"data.data_dir={data_dir}"]
    with pytest.raises(ConfigError, match=r"trainer\.guard\.protect=lang:en needs a watched medical set.*\['ko'\]"):
        check_watch(compose(guard_en))
    with pytest.raises(ConfigError, match=r"trainer\.keep_by=worst_lang needs a watched medical set"):
        check_watch(compose(["eval.watch=[mmlu_general]", "trainer.keep=best", f"data.data_dir={data_dir}"]))
    check_watch(compose(["trainer.guard.protect=[lang:ko,lang:en]", "trainer.keep=best"]))  # the demo's sets


@pytest.mark.parametrize("ratio", ["1:1", "1:0"])
def test_the_gpu_watch_experiment_passes_the_preflight(single_process: None, data_dir: Path, ratio: str) -> None:
    """mix_watch (issue 22 on the GPU) with the real data: every source, eval task and watch set is there."""
    overrides = ["+experiment=mix_watch", f"data_mix.ratio='{ratio}'", "seed=0", f"data.data_dir={data_dir}"]
    check_run(compose(overrides), _dict_cfg(overrides))


def test_the_gpu_search_passes_the_preflight_for_its_runs(single_process: None, data_dir: Path, tmp_path: Path) -> None:
    """search=ratio_ko_270m (issue 34 on the GPU, experiments/gpu/real_270m.sh) with the real data: the proxy runs'
    and the confirming run's medtune.train overrides compose, and every source and eval set they name is there."""
    from medtune.config.search import compose_search
    from medtune.search.plan import confirm_job, plan_jobs
    from medtune.search.scores import check_groups

    scfg = compose_search(["+search=ratio_ko_270m"])
    overrides = [*scfg.train, f"data.data_dir={data_dir}"]
    cfg = compose(overrides)
    assert check_groups(scfg, cfg) == ["lang:en", "kormed_law", "lang:ko"]
    assert (scfg.vary, len(scfg.shares), len(scfg.seeds), scfg.parallel) == ("en", 5, 2, 5)  # issue 34: >= 5 x 2
    jobs = plan_jobs(scfg, cfg, overrides, tmp_path)
    confirm = confirm_job(scfg, cfg, overrides, tmp_path, scfg.shares[-1])
    for job, steps in ((jobs[0], 50), (jobs[-1], 50), (confirm, 110)):  # proxies 50 steps, the confirmation 110
        argv = [a for a in job.argv if not a.startswith("hydra.")]  # the run directory: the search's to choose
        run_cfg = compose(argv)
        check_run(run_cfg, _dict_cfg(argv))
        assert run_cfg.data_mix.ratio == f"en:ko={job.share:g}:{1 - job.share:g}" and run_cfg.eval.limit == 200
        assert run_cfg.trainer.max_steps == steps
