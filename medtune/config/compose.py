"""Hydra glue: the schemas registered per config group, a composed config turned into TrainConfig, and compose().

register_configs()                          # once, before Hydra composes (the entry points do it at import)
cfg = to_train_config(dict_cfg)             # every dataclass check runs; ConfigError names the key
cfg = compose(["+experiment=mix_10_3"])     # conf/train.yaml + overrides, outside a Hydra app (memory, bench, tests)

compose() reads the user's own folder ($MEDTUNE_CONFIG_DIR, config/location.py) beside the shipped groups, as
medtune.train does.
"""

from __future__ import annotations

import os
from typing import Any

from hydra.core.config_store import ConfigStore

from medtune.config.checks import ConfigError
from medtune.config.data import DataMixConfig
from medtune.config.eval import EvalConfig
from medtune.config.location import CONF, check_choices, searchpath_overrides, user_config_dir
from medtune.config.logger import LoggerConfig
from medtune.config.training import (
    ModelConfig,
    PackingConfig,
    QuantizationConfig,
    ShardingConfig,
    TrainConfig,
)

GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "quantization": QuantizationConfig,
    "sharding": ShardingConfig,
    "packing": PackingConfig,
    "data_mix": DataMixConfig,
    "eval": EvalConfig,
    "logger": LoggerConfig,
}


def register_configs() -> None:
    """Register the schemas so each group's YAML files are validated against their dataclass."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)


def to_train_config(cfg: Any) -> TrainConfig:
    """Turn a composed DictConfig into TrainConfig, running every check; errors name the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key or ''}: {err.msg}".strip(": ")) from err
    if not isinstance(obj, TrainConfig):
        raise ConfigError("the composed config is not a TrainConfig; does conf/train.yaml list train_schema?")
    return obj


def compose(overrides: list[str]) -> TrainConfig:
    """conf/train.yaml composed with Hydra overrides and checked (the same config medtune.train would run), the
    user's folder ($MEDTUNE_CONFIG_DIR) beside the shipped groups; a choice found nowhere is a ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException

    register_configs()
    check_choices(overrides)
    searchpath = searchpath_overrides()
    os.environ.setdefault("MEDTUNE_RUN_STAMP", "compose")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return to_train_config(hydra_compose(config_name="train", overrides=[*overrides, *searchpath]))
    except MissingConfigException as err:  # one check_choices cannot see (a shipped file's own defaults)
        folders = " and ".join(str(f) for f in (user_config_dir(), CONF) if f is not None)
        raise ConfigError(f"{str(err).splitlines()[0]} (searched {folders})") from None
    except ConfigCompositionException as err:  # a key the schema lacks: "Could not override 'x.y'. ... not in ..."
        first = str(err).splitlines()[0]
        why = str(err.__cause__ or "").splitlines()[:1]  # "Key 'nope' not in 'ModelConfig'"
        raise ConfigError(f"{first} {''.join(why)}: check the key's spelling against that group's fields") from None
