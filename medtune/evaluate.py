"""`python -m medtune.evaluate`: evaluate a model (and optionally a trained adapter) on local tasks through lm-eval.

    python -m medtune.evaluate model=gemma3_270m eval=medical eval.limit=50     # the base model, a subset
    python -m medtune.evaluate eval.adapter=runs/.../adapter                     # an adapter vs the (cached) base
    torchrun --nproc-per-node 2 -m medtune.evaluate ... sharding=fsdp            # questions spread over the ranks

The config is the package's conf/train.yaml (same groups, same overrides, `--config-dir DIR` or $MEDTUNE_CONFIG_DIR
for your own files, as in medtune.train); only the evaluation stage runs
(medtune.eval.evaluation writes eval/ under the run directory: tasks, predictions, metrics.json, report.md).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from medtune.config import ConfigError, TrainConfig, hydra_argv, register_configs, to_train_config

log = logging.getLogger("medtune.evaluate")
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(dict_cfg: DictConfig) -> None:
    """Load the model (plus eval.adapter), evaluate, print the tables."""
    from hydra.core.hydra_config import HydraConfig

    try:
        cfg = to_train_config(dict_cfg)
        _preflight(cfg, dict_cfg)
    except ConfigError as err:
        log.error("invalid config: %s", err)
        sys.exit(2)
    from medtune.eval.adapter_check import AdapterFileError, AdapterInactiveError, BaseMismatchError
    from medtune.eval.sanity import EvalSanityError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics_dir = _evaluate_command(cfg, dict_cfg, run_dir)
    except (AdapterFileError, BaseMismatchError) as err:  # bad input: a damaged adapter, or one of another base
        log.error("%s", err)
        sys.exit(2)
    except (AdapterInactiveError, EvalSanityError) as err:
        log.error("%s", err)
        sys.exit(1)
    if metrics_dir is not None:
        print((metrics_dir / "report.md").read_text(encoding="utf-8"))
        print(f"written: {metrics_dir}")


def _preflight(cfg: TrainConfig, dict_cfg: DictConfig) -> None:
    """The checks that need no model: keys, launch (replicas allowed), tasks and their data, the adapter dir."""
    from medtune.data.prepare import resolve_dir
    from medtune.training.preflight import check_dataset_files, check_known_keys, check_launch, check_tasks

    check_known_keys(dict_cfg)
    check_launch(cfg, replicas_ok=True, entry="medtune.evaluate")
    check_dataset_files(cfg.data)  # a bad declared file stops here with its line and field, as in medtune.train
    check_tasks(cfg)
    if cfg.eval.adapter and not (resolve_dir(cfg.eval.adapter) / "adapter_config.json").is_file():
        raise ConfigError(
            f"eval.adapter={cfg.eval.adapter}: no adapter_config.json there; point it at a saved adapter directory "
            "(a run's <run dir>/adapter)."
        )


def _evaluate_command(cfg: TrainConfig, dict_cfg: DictConfig, run_dir: Path) -> Path | None:
    """Build the model (and adapter) on every rank, shard it under sharding=fsdp, evaluate; rank 0's eval dir.

    Under torchrun each rank scores a share of the questions: with sharding=fsdp through one sharded model, with
    sharding=none or ddp through a whole copy per rank. A stalled rank stops all of them (sharding.timeout_min).
    """
    import torch

    from medtune.eval.adapter_check import load_adapter
    from medtune.eval.evaluation import evaluate
    from medtune.eval.ranks import Ranks
    from medtune.models.build import build_model
    from medtune.training import distributed
    from medtune.training.watchdog import Watchdog

    dist = distributed.init(cfg.sharding, cfg.trainer.device, replicas_ok=True)
    if dist.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(dict_cfg, resolve=True))
    watch = Watchdog(cfg.sharding.timeout_min * 60)
    try:
        torch.manual_seed(cfg.seed)  # a random-init model (model.init=random) is then the same base as in training
        model, tokenizer = build_model(cfg.model, cfg.quantization, dist.device)
        label = "base"
        if cfg.eval.adapter:
            model = load_adapter(model, cfg.eval.adapter, cfg.eval.base_mismatch_ok)
            label = "adapter"
        if cfg.sharding.strategy == "fsdp":
            model = distributed.wrap_model(model, cfg.sharding, dist, cfg.trainer)
        if dist.world_size > 1:
            watch.start()
        watch.enter("eval")
        ranks = Ranks.current(lockstep=distributed.is_fsdp(model), on_forward=watch.tick)
        # the scorer's logits set this peak (eval.scorer, eval.batch_size); the model's own memory is in it
        with distributed.measured_scoring(model, dist.device, "eval") as (plain, memory):
            evaluate(plain, tokenizer, cfg.eval, cfg.data, run_dir, label=label, ranks=ranks)
        log.info("eval peak memory: %s", {k: round(v, 2) for k, v in memory.items()})
        if dist.is_main:
            (run_dir / "eval" / "memory.json").write_text(json.dumps(memory, indent=1, sort_keys=True))
    finally:
        watch.stop()
        distributed.cleanup()
    return run_dir / "eval" if dist.is_main else None


def main() -> None:
    """Console entry: name the run directory (shared by all torchrun ranks), then let Hydra run."""
    try:  # --config-dir DIR / $MEDTUNE_CONFIG_DIR: the user's folder beside the shipped groups (config/location.py)
        sys.argv = hydra_argv(sys.argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if "MEDTUNE_RUN_STAMP" not in os.environ and not any(a in ("--help", "-h", "--cfg", "-c") for a in sys.argv):
        from medtune.training.launch import shared_run_stamp

        os.environ["MEDTUNE_RUN_STAMP"] = shared_run_stamp().replace("/", "_") + "_eval"
    os.environ.setdefault("MEDTUNE_RUN_STAMP", time.strftime("%Y-%m-%d_%H-%M-%S") + "_eval")
    _hydra_main()


if __name__ == "__main__":
    main()
