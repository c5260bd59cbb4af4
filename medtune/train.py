"""The train/eval entry point.

python -m medtune.train                              # the demo: Gemma 3 270M on the built-in sample, CPU
python -m medtune.train +experiment=mix_10_3         # one experiment
python -m medtune.train -m +experiment=mix_sweep seed=0,1,2   # a sweep; exit status = number of failed jobs
torchrun --nproc-per-node 2 -m medtune.train sharding=fsdp quantization=nf4   # several GPUs
python -m medtune.train --config-dir my_config +experiment=own_vi   # my_config/experiment/own_vi.yaml
python -m medtune.train --help                       # groups and their choices
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from medtune.config import register_configs, to_train_config
from medtune.eval.sanity import EvalSanityError
from medtune.files.space import StorageError
from medtune.runtime import lifecycle, sweep
from medtune.runtime.preflight import check_run
from medtune.training.checkpoint.resume import check_target

log = logging.getLogger("medtune.train")
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(dict_cfg: DictConfig) -> float | None:
    """Validate the composed config, then run the recipe (train and/or eval); in a sweep, a failure is recorded."""
    # the run logged the line of a failed evaluation check or of a full disk, and wrote summary.json if it could
    with lifecycle.exits_on_failure(log, logged=(EvalSanityError, StorageError, OSError)):
        summary = lifecycle.run_or_sweep(lambda run_dir, multirun: _train(dict_cfg, run_dir, multirun))
    loss = summary.get("eval/loss")
    return float(loss) if loss is not None else None


def _train(dict_cfg: DictConfig, run_dir: Path, multirun: bool) -> dict:
    cfg = to_train_config(dict_cfg)
    check_run(cfg, dict_cfg)  # before torch: names, files, launch
    check_target(cfg.trainer.resume)  # the resume target exists (training's rule, torch-free)
    from medtune.training.run import run

    return run(cfg, dict_cfg, run_dir, multirun)


def main() -> None:
    """Console entry: the run directory (shared by all torchrun ranks), Hydra, then a sweep's failed jobs."""
    lifecycle.start(_hydra_main)
    failed = sweep.exit_status()  # a sweep that lost jobs says so (single runs exit above on failure)
    if failed:
        sys.exit(failed)


if __name__ == "__main__":
    main()
