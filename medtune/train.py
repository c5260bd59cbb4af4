"""The train/eval entry point.

    python -m medtune.train                              # the demo: Gemma 3 270M on the built-in sample, CPU
    python -m medtune.train +experiment=mix_10_3         # one experiment
    python -m medtune.train -m +experiment=mix_sweep seed=0,1,2   # a sweep
    python -m medtune.train --help                       # groups and their choices
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from medtune.config import ConfigError, register_configs, to_train_config

log = logging.getLogger("medtune.train")
register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(dict_cfg: DictConfig) -> float | None:
    """Validate the composed config, then run the recipe (train and/or eval)."""
    try:
        cfg = to_train_config(dict_cfg)
    except ConfigError as err:
        log.error("invalid config: %s", err)
        sys.exit(2)
    from medtune.recipe import run

    return run(cfg, dict_cfg)


if __name__ == "__main__":
    main()
