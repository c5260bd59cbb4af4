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
from pathlib import Path

import hydra
from omegaconf import DictConfig

from medtune.config import TrainConfig, register_configs, to_train_config
from medtune.runtime import lifecycle
from medtune.runtime.preflight import check_eval

log = logging.getLogger("medtune.evaluate")
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(dict_cfg: DictConfig) -> None:
    """Load the model (plus eval.adapter), evaluate, print the tables."""
    with lifecycle.exits_on_failure(log):  # an invalid config: one line, before torch is imported
        cfg = to_train_config(dict_cfg)
        check_eval(cfg, dict_cfg)
    from medtune.eval.adapter_check import AdapterFileError, AdapterInactiveError, BaseMismatchError
    from medtune.eval.sanity import EvalSanityError

    bad_input = (AdapterFileError, BaseMismatchError)  # a damaged adapter, or one of another base
    with lifecycle.exits_on_failure(log, bad_input=bad_input, failed=(AdapterInactiveError, EvalSanityError)):
        metrics_dir = _evaluate(cfg, dict_cfg, lifecycle.hydra_run_dir())
    if metrics_dir is not None:
        print((metrics_dir / "report.md").read_text(encoding="utf-8"))
        print(f"written: {metrics_dir}")


def _evaluate(cfg: TrainConfig, dict_cfg: DictConfig, run_dir: Path) -> Path | None:
    """Build the model (and adapter), sharded under sharding=fsdp (one decoder layer at a time with the default
    sharding.load=per_layer: runtime/eval_model.py), evaluate; rank 0's eval dir.

    Under torchrun each rank scores a share of the questions: with sharding=fsdp through one sharded model, with
    sharding=none or ddp through a whole copy per rank. A stalled rank stops all of them (sharding.timeout_min).
    """
    import torch

    from medtune.eval.evaluation import evaluate
    from medtune.eval.ranks import Ranks
    from medtune.runtime.eval_model import build_eval_model
    from medtune.runtime.run_record import write_config
    from medtune.runtime.shards import is_fsdp, measured_scoring

    with lifecycle.session(cfg.sharding, cfg.trainer.device, replicas_ok=True) as (dist, watchdog):
        write_config(run_dir, dict_cfg, dist)
        torch.manual_seed(cfg.seed)  # a random-init model (model.init=random) is then the same base as in training
        model, tokenizer = build_eval_model(cfg, dist)
        if dist.world_size > 1:
            watchdog.start()
        watchdog.enter("eval")
        ranks = Ranks.current(lockstep=is_fsdp(model), on_forward=watchdog.tick)
        # the scorer's logits set this peak (eval.scorer, eval.batch_size); the model's own memory is in it
        with measured_scoring(model, dist.device, "eval") as (plain, memory):
            label = "adapter" if cfg.eval.adapter else "base"
            evaluate(plain, tokenizer, cfg.eval, cfg.data, run_dir, label=label, ranks=ranks)
        log.info("eval peak memory: %s", {k: round(v, 2) for k, v in memory.items()})
        if dist.is_main:
            (run_dir / "eval" / "memory.json").write_text(json.dumps(memory, indent=1, sort_keys=True))
    return run_dir / "eval" if dist.is_main else None


def main() -> None:
    """Console entry: the run directory (one folder, `<time>_eval`, shared by all torchrun ranks), then Hydra."""
    lifecycle.start(_hydra_main, suffix="_eval")


if __name__ == "__main__":
    main()
