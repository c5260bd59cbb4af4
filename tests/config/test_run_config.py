"""A run's config.yaml read back through the schema: every committed run loads, renamed keys migrate, and a file
that cannot be read is one line naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from medtune.config import ConfigError, TrainConfig, load_run_config, run_config_path
from medtune.config import run_config as run_config_module
from medtune.config.run_config import Migration

COMMITTED = sorted((REPO / "experiments" / "results").rglob("*config.yaml"))
MODEL = {"name": "tiny_llama", "source": "builtin", "arch": "tiny_llama", "init": "random"}


def _write(path: Path, config: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def test_committed_runs_are_all_found() -> None:
    assert len(COMMITTED) >= 28  # 27 config.yaml (two of them Hydra's) and fsdp_2gpu/a_train_eval.config.yaml


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(REPO / "experiments" / "results")))
def test_every_committed_run_loads_through_the_schema(path: Path) -> None:
    """A schema change that breaks an old run's config.yaml fails here: add the key to MIGRATIONS."""
    cfg = load_run_config(path)
    assert isinstance(cfg, TrainConfig)
    raw = yaml.safe_load(path.read_text())
    assert cfg.seed == raw["seed"] and cfg.model.name == raw["model"]["name"] and cfg.stage == raw["stage"]
    summary = path.with_name("summary.json")
    if summary.is_file() and "data_mix/requested_ratio" in (recorded := json.loads(summary.read_text())):
        # the mix the run built (its record) is the mix the typed config gives, ratio applied over the weights
        assert ":".join(f"{w:g}" for w in cfg.data_mix.weights.values()) == recorded["data_mix/requested_ratio"]


def test_run_dir_reads_config_yaml_else_hydras(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hydra = _write(run / ".hydra" / "config.yaml", {"model": MODEL, "seed": 1})
    assert run_config_path(run) == hydra and load_run_config(run).seed == 1
    _write(run / "config.yaml", {"model": MODEL, "seed": 2})
    assert run_config_path(run) == run / "config.yaml" and load_run_config(run).seed == 2
    assert run_config_path(tmp_path / "none") is None
    with pytest.raises(ConfigError, match=r"none: no config\.yaml"):
        load_run_config(tmp_path / "none")


def test_ratio_is_applied_by_the_schema(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.yaml", {"model": MODEL, "data_mix": {"ratio": "10:3", "weights": {"en": 1}}})
    assert load_run_config(path).data_mix.weights == {"en": 10.0, "ko": 3.0}


def test_renamed_and_removed_keys_migrate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = {"model": MODEL, "trainer": {"steps": 7, "gone": True}, "old_top": "x"}
    path = _write(tmp_path / "config.yaml", old)
    with pytest.raises(ConfigError) as err:
        load_run_config(path)  # without its migration, an old key is an error, never silently dropped
    assert str(err.value).startswith(f"{path}: old_top: Key 'old_top' not in 'TrainConfig'")  # keys A-Z
    assert "MIGRATIONS" in str(err.value) and "\n" not in str(err.value)
    table = (
        Migration("trainer.steps", "trainer.max_steps", "renamed in a test"),
        Migration("trainer.gone", None, "removed in a test"),
        Migration("old_top", None, "removed in a test"),
        Migration("lora.not_there", "lora.r", "absent from this file: nothing to do"),
    )
    monkeypatch.setattr(run_config_module, "MIGRATIONS", table)
    cfg = load_run_config(path)
    assert cfg.trainer.max_steps == 7 and cfg.lora.r == 16
    _write(path, {"model": MODEL, "trainer": {"steps": 7, "max_steps": 9}})
    with pytest.raises(ConfigError, match=r"config\.yaml: both trainer\.steps \(older name\) and trainer\.max_steps"):
        load_run_config(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: [\n", r"config\.yaml:2: not valid YAML"),
        ("- 1\n", r"config\.yaml: expected a mapping"),
        (
            yaml.safe_dump({"model": MODEL, "lora": {"r": "abc"}}),
            r"config\.yaml: lora\.r: Value 'abc' .*correct the value",
        ),
        (
            yaml.safe_dump({"model": MODEL, "data_mix": {"ratio": "ten:three"}}),
            r"config\.yaml: data_mix\.ratio='ten:three'",
        ),
        ("seed: 0\n", r"config\.yaml: model: .*missing mandatory value: model"),
    ],
    ids=["yaml", "list", "type", "check", "missing"],
)
def test_a_bad_file_is_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path / "run" / "config.yaml", text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_run_config(path.parent)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
