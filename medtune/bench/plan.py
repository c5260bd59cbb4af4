"""The benchmark's plan: its configurations, composed; the order they run in; and running one in its own process.

Liger's kernels are applied by patching transformers' model module for the whole process (apply_liger_kernel_to_*),
so a configuration without `trainer.kernels` that runs after one with them measures Liger too (it did on the H200:
experiments/results/efficiency_h200/b_one_process). Two ways out, chosen by `--isolate`:
- each configuration in its own fresh process (`isolate`): nothing carries over, and every configuration's first step
  is also timed from its own process's start; the default (auto) for a one-GPU plan that mixes kernels;
- in one process, the configurations without patched kernels first (`run_order`): under torchrun, or `--isolate never`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from medtune.config import compose
from medtune.memory.estimate import load_arch
from medtune.models.kernels import resolve_kernels


def load_plan(path: Path) -> dict[str, Any]:
    """The benchmark plan: common overrides, named configurations (override lists), baseline, multi-GPU extras."""
    plan = yaml.safe_load(path.read_text())
    configs = plan.get("configurations") if isinstance(plan, dict) else None
    if not isinstance(configs, dict) or not configs:
        raise ValueError(f"{path}: needs a 'configurations' mapping of name -> list of Hydra overrides.")
    for name, overrides in configs.items():
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError(
                f"{path}: configurations.{name} must be a list of override strings like 'quantization=nf4'."
            )
    if plan.get("baseline", next(iter(configs))) not in configs:
        raise ValueError(f"{path}: baseline={plan['baseline']!r} is not one of {list(configs)}.")
    return plan


def compose_config(plan: dict, name: str, extra: list[str], args: argparse.Namespace, world_size: int) -> tuple:
    """One configuration's TrainConfig and the overrides that made it (its `auto` choices are settled where it runs,
    by training.fast_paths.settle, as medtune.train settles them)."""
    overrides = [*plan.get("common", []), *plan["configurations"][name], *extra]
    if world_size > 1:
        overrides += plan.get("distributed_overrides", ["sharding=fsdp"])
    cfg = compose([*overrides, f"trainer.max_steps={args.warmup + args.steps + 2}"])
    return cfg, overrides


def patches_globally(cfg: Any) -> bool:
    """Whether building this configuration changes the process for the ones after it (Liger's module patches):
    trainer.kernels=liger, or auto where it would take Liger (a CUDA GPU with liger-kernel)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model_type = load_arch(cfg).model_type
    except ValueError:
        model_type = None
    return resolve_kernels(cfg.trainer.kernels, "kernels", device, model_type)[0] != "none"


def isolate(mode: str, cfgs: dict[str, Any], world_size: int) -> bool:
    """Run each configuration in its own process? auto: on one GPU, when the plan mixes patched kernels and not."""
    if mode == "never" or len(cfgs) < 2:
        return False
    if world_size > 1:  # every rank would start its own children: order the configurations instead
        if mode == "always":
            raise ValueError("--isolate always runs one process per configuration, not under torchrun.")
        return False
    return mode == "always" or any(patches_globally(c) for c in cfgs.values())


def run_order(cfgs: dict[str, Any]) -> list[str]:
    """In one process: configurations that patch nothing first, then the others (plan order within each)."""
    return sorted(cfgs, key=lambda name: patches_globally(cfgs[name]))


def run_bounded(cmd: list[str], env: dict[str, str], log_file: Any, timeout_s: float) -> int | None:
    """The command's exit status, or None when it ran past timeout_s: then it is killed with everything it started
    (its own process group: compile workers too, which would otherwise keep the GPU)."""
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def measure_in_own_process(
    name: str, plan: dict, args: argparse.Namespace, extra: list[str], out_dir: Path
) -> dict[str, Any]:
    """`python -m medtune.bench` on this one configuration in a child process; its measurements (raises if failed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    one = {"common": plan.get("common", []), "baseline": name, "configurations": {name: plan["configurations"][name]}}
    (out_dir / "plan.yaml").write_text(yaml.safe_dump(one))
    cmd = [sys.executable, "-m", "medtune.bench", "--config", str(out_dir / "plan.yaml"), "--lengths", args.lengths,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(out_dir), "--isolate", "never",
           *extra]  # fmt: skip
    with open(out_dir / "bench.log", "w") as log_file:  # a hung configuration fails its row, not the bench
        code = run_bounded(cmd, dict(os.environ), log_file, args.peer_timeout_s)
    results = out_dir / "results.json"
    if code is None:
        raise RuntimeError(f"stopped after --peer-timeout-s={args.peer_timeout_s:g} s; log: {out_dir / 'bench.log'}")
    if code != 0 or not results.is_file():
        raise RuntimeError(f"its process exited with {code}; log: {out_dir / 'bench.log'}")
    row = json.loads(results.read_text())["configurations"][0]
    if row.get("status") != "ok":
        raise RuntimeError(row.get("error", "failed") + f" (log: {out_dir / 'bench.log'})")
    return {k: v for k, v in row.items() if k not in ("name", "overrides", "status", "wall_s", "memory_ratio",
                                                      "speed_ratio", "error_pct")}  # fmt: skip
