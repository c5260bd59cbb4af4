"""Config: one dataclass schema per Hydra group, their checks, and the Hydra glue. No torch, nothing else of medtune.

from medtune.config import TrainConfig, ConfigError, compose, to_train_config
from medtune.config import load_run_config    # a finished run's config.yaml, through the same schema
"""

from medtune.config.checks import CACHE_ROOT, DTYPES, ConfigError, cache_root, check_choice, check_positive
from medtune.config.compose import GROUPS, compose, register_configs, to_train_config
from medtune.config.data import (
    DEFAULT_EVAL_SPLITS,
    PROMPT_WORD_KEYS,
    DataConfig,
    DataMixConfig,
    parse_ratio,
)
from medtune.config.datasets import DatasetConfig, HoldoutConfig
from medtune.config.eval import EvalConfig
from medtune.config.languages import language_name, normalize_language
from medtune.config.location import CONF, OPTION_HELP, hydra_argv, take_config_dir, use_config_dir
from medtune.config.logger import LoggerConfig
from medtune.config.run_config import MIGRATIONS, Migration, load_run_config, run_config_path
from medtune.config.training import (
    LoraConfig,
    ModelConfig,
    OptimConfig,
    PackingConfig,
    QuantizationConfig,
    ShardingConfig,
    TrainConfig,
    TrainerConfig,
)
from medtune.config.watch import WORST_LANG, GuardConfig

__all__ = [
    "CACHE_ROOT",
    "CONF",
    "DEFAULT_EVAL_SPLITS",
    "DTYPES",
    "GROUPS",
    "MIGRATIONS",
    "OPTION_HELP",
    "PROMPT_WORD_KEYS",
    "WORST_LANG",
    "ConfigError",
    "DataConfig",
    "DataMixConfig",
    "DatasetConfig",
    "EvalConfig",
    "GuardConfig",
    "HoldoutConfig",
    "LoggerConfig",
    "LoraConfig",
    "Migration",
    "ModelConfig",
    "OptimConfig",
    "PackingConfig",
    "QuantizationConfig",
    "ShardingConfig",
    "TrainConfig",
    "TrainerConfig",
    "cache_root",
    "check_choice",
    "check_positive",
    "compose",
    "hydra_argv",
    "language_name",
    "load_run_config",
    "normalize_language",
    "parse_ratio",
    "register_configs",
    "run_config_path",
    "take_config_dir",
    "to_train_config",
    "use_config_dir",
]
