"""A config folder of the user's own, beside the shipped groups: found the same way by every command that composes
a config (`--config-dir DIR` or MEDTUNE_CONFIG_DIR), and a bad folder or name is one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from own_config import DATA_MIX, write_own_folder

from medtune.config import CONF, ConfigError, compose, hydra_argv, take_config_dir
from medtune.config.location import ENV


@pytest.fixture
def own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's folder; MEDTUNE_CONFIG_DIR is cleared here and restored after the test (commands export it)."""
    monkeypatch.setenv(ENV, "")
    return write_own_folder(tmp_path)


def test_the_folder_is_used_beside_the_shipped_groups(own: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, str(own))
    cfg = compose(["+experiment=own_vi", "model=tiny_llama"])  # a user experiment, its user data_mix, a shipped model
    assert cfg.run_name == "own_vi" and cfg.model.name == "tiny_llama"
    assert cfg.data_mix.sources == {"en": {"sample_en:train": 1.0}, "vi": {"vi_exam:train": 1.0}}
    assert cfg.data.datasets["vi_exam"].language == "vi"
    assert compose(["data_mix=own_vi"]).data_mix.ratio == "en:vi=1:1"  # a user group file chosen on its own
    assert compose(["+experiment=mix_10_3"]).data_mix.ratio == "10:3"  # shipped experiments stay


@pytest.mark.parametrize("form", [["--config-dir", "{d}"], ["--config-dir={d}"], ["-cd", "{d}"]])
def test_the_option_is_taken_off_and_exported(own: Path, monkeypatch: pytest.MonkeyPatch, form: list[str]) -> None:
    monkeypatch.chdir(own.parent)
    argv = ["model=tiny_llama", *(a.format(d="my_config") for a in form), "+experiment=own_vi"]
    assert take_config_dir(argv) == ["model=tiny_llama", "+experiment=own_vi"]
    assert os.environ[ENV] == str(own)  # absolute: a child process in another directory finds it too


def test_a_hydra_app_gets_the_checked_folder(own: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, str(own))
    assert hydra_argv(["train.py", "+experiment=own_vi", "--cfg", "job"]) == [
        "train.py", "--config-dir", str(own), "+experiment=own_vi", "--cfg", "job",
    ]  # fmt: skip
    monkeypatch.setenv(ENV, "")
    assert hydra_argv(["train.py", "model=tiny_llama"]) == ["train.py", "model=tiny_llama"]  # inside the repo: as was


def _break(own: Path, case: str) -> tuple[list[str], str]:
    """Spoil the folder one way; the overrides that then fail and the message expected."""
    if case == "missing folder":
        os.environ[ENV] = str(own.parent / "no_such_folder")
        return ["+experiment=own_vi"], r"MEDTUNE_CONFIG_DIR=.*no_such_folder: no such folder .*Create it"
    if case == "name in neither place":
        return ["+experiment=own_vii"], (
            rf"\+experiment=own_vii: no experiment/own_vii.yaml in {own} or among the shipped configs \({CONF}\); "
            rf"create {own}/experiment/own_vii.yaml, or choose one of: own_vi, en_only"
        )
    if case == "a sweep value in neither place":
        return ["+experiment=own_vi,mix_1_1,own_vii"], r"no experiment/own_vii.yaml"
    if case == "shadows a shipped file":
        (own / "data_mix" / "medical.yaml").write_text(DATA_MIX)
        return ["+experiment=own_vi"], (
            rf"{own}/data_mix/medical.yaml has the name of a shipped config \({CONF}/data_mix/medical.yaml\), so the "
            r"shipped one would be used and yours ignored. Rename yours \(e.g. data_mix/medical_own.yaml\)"
        )
    if case == "defaults entry names a .yml file":
        (own / "data_mix" / "own_vi.yaml").rename(own / "data_mix" / "own_vi.yml")
        return ["+experiment=own_vi"], (
            rf"{own}/experiment/own_vi.yaml: defaults entry `override /data_mix: own_vi`: no data_mix/own_vi.yaml .*"
            rf"\(there is {own}/data_mix/own_vi.yml: move or rename it\)"
        )
    assert case == "no folder given"
    os.environ[ENV] = ""
    return ["+experiment=own_vi"], (
        r"no experiment/own_vi.yaml among the shipped configs .*; a file of your own goes in a folder given by "
        r"--config-dir DIR or MEDTUNE_CONFIG_DIR, as DIR/experiment/own_vi.yaml"
    )


CASES = [
    "missing folder",
    "name in neither place",
    "a sweep value in neither place",
    "shadows a shipped file",
    "defaults entry names a .yml file",
    "no folder given",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_folders_and_names_give_one_line(own: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    monkeypatch.setenv(ENV, str(own))
    overrides, message = _break(own, case)
    with pytest.raises(ConfigError, match=message) as err:
        compose(overrides)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=message):  # the Hydra apps check before Hydra starts
        hydra_argv(["train.py", *overrides])


def _command(module: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV: "", "WANDB_MODE": "offline", **(env or {})}
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_train_and_evaluate_take_the_folder_by_option_or_environment(own: Path) -> None:
    """From a directory of the user's (no repo around it): `--config-dir` and MEDTUNE_CONFIG_DIR compose the same."""
    cwd = own.parent
    by_option = _command("medtune.train", cwd, "--config-dir", "my_config", "+experiment=own_vi", "--cfg", "job")
    by_env = _command("medtune.evaluate", cwd, "+experiment=own_vi", "--cfg", "job", env={ENV: "my_config"})
    for proc in (by_option, by_env):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "vi_exam:train: 1.0" in proc.stdout and "run_name: own_vi" in proc.stdout
    bad = _command("medtune.train", cwd, "--config-dir", "my_config", "+experiment=own_vii", "trainer.max_steps=1")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no experiment/own_vii.yaml in" in bad.stderr, bad.stderr
    assert not (cwd / "runs").exists()  # stopped before Hydra made a run directory


def test_prepare_memory_and_bench_take_the_same_option(own: Path, capsys: pytest.CaptureFixture) -> None:
    from medtune.bench.cli import main as bench_main
    from medtune.data.cli import main as prepare_main
    from medtune.memory.cli import main as memory_main

    cache = own.parent / "cache"
    argv = ["prepare", "--config-dir", str(own), "--cache-dir", str(cache), "--no-leakage", "+experiment=own_vi"]
    assert prepare_main([*argv, "--sources", "vi_exam"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("vi_exam")]
    assert [line[:5] for line in lines] == [
        ["vi_exam", "train", "vi", "train", "18"],
        ["vi_exam", "test", "vi", "eval", "6"],
    ]
    os.environ[ENV] = ""
    assert prepare_main(["prepare", "--cache-dir", str(cache), "+experiment=own_vi"]) == 2
    assert "as DIR/experiment/own_vi.yaml" in capsys.readouterr().err
    memory_main(["--config-dir", str(own), "+experiment=own_vi", "model=tiny_llama", "--json"])
    assert json.loads(capsys.readouterr().out)["peak_gib"] > 0
    assert bench_main(["--config-dir", "nowhere", "--steps", "1"]) == 2  # one line, exit 2
    assert "--config-dir nowhere: no such folder" in capsys.readouterr().err
