"""Every experiment composes; bad configs stop before anything loads, with a message that names the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from medtune.config import ConfigError, TrainConfig, parse_ratio, register_configs, to_train_config

CONF = REPO / "medtune" / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
register_configs()


def load(*overrides: str) -> TrainConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return to_train_config(compose("train", overrides=list(overrides)))


def test_defaults_compose_to_the_demo() -> None:
    cfg = load()
    assert cfg.model.name == "gemma3_270m" and cfg.data_mix.sources["ko"] == {"sample_ko:train": 1.0}
    assert cfg.packing.mode == "packed" and cfg.logger.mode == "offline"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment: str) -> None:
    cfg = load(f"+experiment={experiment}")
    assert cfg.run_name == experiment
    assert set(cfg.data_mix.weights) <= set(cfg.data_mix.sources)


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if load(f"+experiment={e}").data_mix.budget])
def test_experiments_on_the_medical_pool_keep_long_answers(experiment: str) -> None:
    """MedQuAD holds answers longer than a 2048-token row (medquad:train:79: 3434 tokens); refusing them stops a run."""
    packing = load(f"+experiment={experiment}").packing
    assert packing.split_long and not packing.truncate


@pytest.mark.parametrize("experiment", ["mix_10_3", "mix_1_1", "mix_3_10", "en_only", "ko_only"])
def test_single_ratio_experiments_are_points_of_the_sweep(experiment: str) -> None:
    one = load(f"+experiment={experiment}")
    point = f"data_mix.ratio='{one.data_mix.ratio}'" if one.data_mix.ratio else "data_mix.ratio=null"
    weights = "data_mix.weights={" + ",".join(f"{k}:{v}" for k, v in one.data_mix.weights.items()) + "}"
    sweep = load("+experiment=mix_sweep", point, weights)
    for group in ("model", "quantization", "packing", "trainer", "optim", "lora", "data_mix"):
        assert getattr(one, group) == getattr(sweep, group), group


@pytest.mark.parametrize(
    ("experiment", "weights"),
    [("mix_10_3", {"en": 10, "ko": 3}), ("mix_1_1", {"en": 1, "ko": 1}), ("en_only", {"en": 1, "ko": 0})],
)
def test_ratio_experiments_set_the_weights(experiment: str, weights: dict) -> None:
    assert load(f"+experiment={experiment}").data_mix.weights == weights


@pytest.mark.parametrize("group", ["model", "quantization", "sharding", "packing", "data_mix", "eval", "logger"])
def test_every_group_choice_composes(group: str) -> None:
    for choice in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        extra = ["model.path=/some/dir"] if group == "model" and choice in ("medgemma_4b", "llama3_3_70b") else []
        load(f"{group}={choice}", *extra)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["packing.max_seq_len=null"], "packing.max_seq_len"),
        (["packing.mode=packd"], "packing.mode"),
        (["sharding=fsdp", "quantization=nf4", "quantization.quant_storage=float32"], "quantization.quant_storage"),
        (["quantization=nf4", "lora.enabled=false"], "lora.enabled"),
        (["model=medgemma_4b", "model.path=null"], "model.path"),
        (["data_mix.ratio=10:3:1"], "data_mix.ratio"),
        (["+data_mix.weights.fr=2"], "data_mix.weights"),
        (["trainer.max_steps=0"], "trainer.max_steps"),
        (["optim.schedule=exp"], "optim.schedule"),
        (["model=tiny_llama", "model.init=pretrained"], "model.init"),
        (["+eval.task_limits.mmlu_general=100"], "eval.task_limits.mmlu_general"),
        (["eval=medical", "+eval.task_limits.mmlu_general=0"], "eval.task_limits.mmlu_general"),
        (["eval.cluster_by=year"], "eval.cluster_by"),
        (["sharding=fsdp", "sharding.load=lazy"], "sharding.load"),
        (["sharding=fsdp", "lora.use_dora=true"], "sharding.load=per_layer"),
    ],
)
def test_bad_config_names_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(*overrides)


def test_wrong_type_and_typo_fail_at_composition() -> None:
    with pytest.raises(Exception, match="max_steps"):
        load("trainer.max_steps=abc")
    with pytest.raises(Exception, match="max_stepz"):
        load("trainer.max_stepz=3")


def test_parse_ratio() -> None:
    assert parse_ratio("10:3", ["en", "ko"]) == {"en": 10.0, "ko": 3.0}
    assert parse_ratio("0:1", ["ko", "en"]) == {"en": 0.0, "ko": 1.0}


def test_cli_rejects_bad_config_fast_with_exit_code_2() -> None:
    """The entry point validates before importing torch or loading anything."""
    proc = subprocess.run(
        [sys.executable, "-m", "medtune.train", "packing.mode=packd"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "packing.mode" in proc.stderr + proc.stdout


def test_cli_help_lists_groups_and_cfg_job_prints_the_experiment() -> None:
    run = [sys.executable, "-m", "medtune.train"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    for group in ("model", "quantization", "sharding", "packing", "data_mix", "eval", "logger", "experiment"):
        assert group in helped.stdout
    printed = subprocess.run(
        [*run, "+experiment=mix_10_3", "--cfg", "job"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert printed.returncode == 0 and "ratio: '10:3'" in printed.stdout


@pytest.mark.parametrize(
    ("override", "value"),
    [
        ("trainer.micro_batch_size=auto", "auto"),
        ("trainer.micro_batch_size=4", 4),
        ("trainer.grad_ckpt_every=2", 2),
        ("trainer.offload_activations=true", True),
        ("trainer.offload_activations=auto", "auto"),
    ],
)
def test_whole_or_auto_keys_are_typed(override: str, value: object) -> None:
    """micro_batch_size, grad_ckpt_every (int or auto) and offload_activations (bool or auto) keep their type."""
    from medtune.config.compose import compose as medtune_compose

    key, _ = override.split("=")
    got = medtune_compose([override])
    for part in key.split("."):
        got = getattr(got, part)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "override", ["trainer.micro_batch_size=2.5", "trainer.grad_ckpt_every=true", "trainer.offload_activations=1"]
)
def test_a_value_of_the_wrong_type_names_its_key(override: str) -> None:
    """The schema's union types refuse a float rows count, a bool checkpoint cadence, an int offload switch."""
    from medtune.config.compose import compose as medtune_compose

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        medtune_compose([override])
