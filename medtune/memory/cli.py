"""`python -m medtune.memory <overrides> [world_size=N] [gpu_memory_gib=G] [label_tokens_per_row=N] [--json]`.

Per-rank peak memory of a config; with gpu_memory_gib, whether it fits such cards (memory/verdict.py).

    python -m medtune.memory model=medgemma_4b model.init=random quantization=nf4 packing=packed
    python -m medtune.memory model=llama3_3_70b quantization=nf4 sharding=fsdp world_size=8 trainer.micro_batch_size=2
    python -m medtune.memory ... --json          # the breakdown as JSON
    python -m medtune.memory ... packing=packed label_tokens_per_row=873   # loss on 873 label tokens per row
    python -m medtune.memory ... trainer.memory_budget_gib=20   # the run's plan: rows, recomputed layers, offload
    python -m medtune.memory +experiment=paper_llama70b_fsdp world_size=2 gpu_memory_gib=24   # fits? which phase?
    python -m medtune.memory --config-dir my_config +experiment=own_vi   # a config of your own folder

`world_size=N` (default: $WORLD_SIZE or 1), `gpu_memory_gib=G` (GiB per card: the verdict, load and train phase,
the switch that makes it fit) and `label_tokens_per_row=N` (default: every token carries a label, the worst case)
are read before Hydra composes conf/train.yaml; every other argument is a Hydra override. No torch, so
no GPU to read a budget from: without trainer.memory_budget_gib, `auto` recomputation is shown as every layer.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from typing import Any

from medtune.config import ConfigError, compose, take_config_dir
from medtune.files.space import GIB
from medtune.memory.estimate import Calibration, estimate, load_arch, load_units
from medtune.memory.plan import plan_memory
from medtune.memory.verdict import fit_verdict


def _number(arg: str) -> float:
    key, value = arg.split("=", 1)
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"{key}={value!r}: expected a number (e.g. {key}=765).") from None


def _world_size(arg: str) -> int:
    value = _number(arg)
    if value < 1 or value != int(value):
        raise SystemExit(f"{arg}: expected a whole number of ranks >= 1 (e.g. world_size=8).")
    return int(value)


def _gib(arg: str) -> float:
    value = _number(arg)
    if value <= 0:
        raise SystemExit(f"{arg}: expected the GiB of one GPU > 0 (e.g. gpu_memory_gib=24).")
    return value


def _parse(args: list[str]) -> tuple[int, float | None, float | None, list[str]]:
    """(world_size, gpu_memory_gib, label_tokens_per_row, Hydra overrides) from the command line."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    label_tokens_per_row: float | None = None
    gpu_memory_gib: float | None = None
    overrides = []
    for arg in args:
        if arg.startswith("world_size="):
            world_size = _world_size(arg)
        elif arg.startswith("gpu_memory_gib="):
            gpu_memory_gib = _gib(arg)
        elif arg.startswith("label_tokens_per_row="):
            label_tokens_per_row = _number(arg)
        elif arg != "--json":
            overrides.append(arg)
    return world_size, gpu_memory_gib, label_tokens_per_row, overrides


def _as_json(cfg: Any, est: Any, world_size: int, label_tokens_per_row: float | None, verdict: Any) -> dict:
    """--json's object: the parts, each phase's peak, the units per-layer loading holds, the inputs and verdict."""
    layer_b, root_b = load_units(load_arch(cfg), cfg)
    return {
        "parts": est.parts,
        "peak_gib": est.peak_gib,
        "load_peak_gib": est.load_peak_bytes / GIB,
        "load_layer_gib": layer_b / GIB,
        "load_root_gib": root_b / GIB,
        "heldout_peak_gib": est.heldout_peak_bytes / GIB,
        "world_size": world_size,
        "label_tokens_per_row": label_tokens_per_row,
        "label_tokens_per_micro_batch": est.label_tokens,
        "calibration": asdict(Calibration()),
        "verdict": None if verdict is None else verdict.as_dict(),
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: print the per-rank breakdown of a composed config (`world_size=N`, `label_tokens_per_row=N`, `--json`)."""
    from hydra.errors import HydraException

    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(__doc__)
        return
    as_json = "--json" in args
    logging.getLogger("medtune.memory.plan").setLevel(logging.ERROR)  # the plan's reason is printed below, once
    world_size, gpu_memory_gib, label_tokens_per_row, overrides = _parse(args)
    try:  # --config-dir DIR ($MEDTUNE_CONFIG_DIR): your own config files beside the shipped ones
        cfg = compose(take_config_dir(overrides))
    except (HydraException, ConfigError) as err:
        print(f"error: {err}\n(arguments are Hydra overrides of conf/train.yaml: see --help)", file=sys.stderr)
        raise SystemExit(2) from None
    verdict = None if gpu_memory_gib is None else fit_verdict(cfg, world_size, gpu_memory_gib, label_tokens_per_row)
    budget = cfg.trainer.memory_budget_gib
    if budget is None and verdict is not None:  # the table shows the plan a run on such a card would make
        budget = verdict.budget_gib
    try:  # a budget given: the plan the run would make (rows, recomputation, offloading); none: every layer
        cfg, planned = plan_memory(cfg, world_size, budget, label_tokens_per_row)
    except (ConfigError, ValueError) as err:  # a budget no micro-batch fits, a model without a shape: bad input
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    over = planned.get("plan/predicted_peak_gib", 0.0) > planned.get("plan/budget_gib", float("inf"))
    if over and verdict is None:  # the smallest plan is over a budget given by hand (a card's verdict says it below)
        print(f"error: memory plan: {planned['plan/reason']}", file=sys.stderr)
        raise SystemExit(2)
    if "plan/predicted_peak_gib" in planned or "trainer/micro_batch_size_auto" in planned:  # stderr: --json stays JSON
        rows = planned.get("trainer/micro_batch_size_auto")
        print(("" if rows is None else f"micro_batch_size=auto: {rows} rows fit the budget\n")
              + f"memory plan: {planned['plan/reason']}", file=sys.stderr)  # fmt: skip
    est = estimate(cfg, world_size, label_tokens_per_row=label_tokens_per_row)
    if as_json:
        print(json.dumps(_as_json(cfg, est, world_size, label_tokens_per_row, verdict), indent=2))
        return
    q, p = cfg.quantization.method, cfg.packing
    est_layers = load_arch(cfg).layers
    print(
        f"{cfg.model.name}: quantization={q} packing={p.mode} rows={cfg.trainer.micro_batch_size}x{p.max_seq_len} "
        f"sharding={cfg.sharding.strategy} checkpointed layers={len(cfg.trainer.checkpointed_layers(est_layers))}"
    )
    print(est.table())
    if verdict is not None:
        print("\n".join(verdict.lines()))
