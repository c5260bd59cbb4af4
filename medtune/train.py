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
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from medtune.config import ConfigError, hydra_argv, register_configs, to_train_config
from medtune.eval.sanity import EvalSanityError
from medtune.files.space import StorageError, explain
from medtune.training import sweep
from medtune.training.preflight import check_run
from medtune.training.watchdog import RunTerminated

log = logging.getLogger("medtune.train")
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(dict_cfg: DictConfig) -> float | None:
    """Validate the composed config, then run the recipe (train and/or eval); in a sweep, a failure is recorded."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            overrides = list(hydra_cfg.overrides.task)
            summary = sweep.run_job(lambda: _train(dict_cfg, run_dir, True), run_dir, hydra_cfg.job.num, overrides)
        else:
            summary = _train(dict_cfg, run_dir, False)
    except RunTerminated as err:  # SIGTERM/SIGINT: recorded as terminated; 128 + the signal, as a shell expects
        sys.exit(err.exit_code)
    except ConfigError as err:  # also a resume whose checkpoint belongs to another config
        log.error("invalid config: %s", err)
        sys.exit(2)
    except EvalSanityError:
        sys.exit(1)  # the run logged the check's one line and its fix, and wrote summary.json
    except (StorageError, OSError) as err:
        if not explain(err):
            raise
        sys.exit(1)  # the run logged the one line (and wrote summary.json if it could); a traceback adds nothing
    loss = summary.get("eval/loss")
    return float(loss) if loss is not None else None


def _train(dict_cfg: DictConfig, run_dir: Path, multirun: bool) -> dict:
    cfg = to_train_config(dict_cfg)
    check_run(cfg, dict_cfg)  # before torch: names, files, resume target, launch
    from medtune.training.run import run

    return run(cfg, dict_cfg, run_dir, multirun)


def main() -> None:
    """Console entry: fix the run directory's timestamp (shared by all torchrun ranks), then let Hydra run."""
    try:  # --config-dir DIR / $MEDTUNE_CONFIG_DIR: the user's folder beside the shipped groups (config/location.py)
        sys.argv = hydra_argv(sys.argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if "MEDTUNE_RUN_STAMP" not in os.environ and not any(a in ("--help", "-h", "--cfg", "-c") for a in sys.argv):
        from medtune.training.launch import shared_run_stamp

        os.environ["MEDTUNE_RUN_STAMP"] = shared_run_stamp()
    os.environ.setdefault("MEDTUNE_RUN_STAMP", "now")
    _hydra_main()
    failed = sweep.exit_status()  # a sweep that lost jobs says so (single runs exit above on failure)
    if failed:
        sys.exit(failed)


if __name__ == "__main__":
    main()
