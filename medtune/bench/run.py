"""Efficiency benchmark: the same training step under several configurations, one after another.

    python -m medtune.bench                                   # experiments/efficiency/configs.yaml, GPU
    python -m medtune.bench --steps 20 --warmup 3 --profile   # + torch.profiler table of the fastest configuration
    torchrun --nproc-per-node 2 -m medtune.bench              # every configuration with sharding=fsdp
    python -m medtune.bench --steps 2 --warmup 1 model=tiny_gemma3 packing.max_seq_len=64   # CPU smoke run

Extra arguments are Hydra overrides applied to every configuration. Each configuration builds its model through
`TrainRecipe` after settling its `auto` choices as medtune.train does (training/fast_paths.py), trains on synthetic
samples whose lengths follow the real training mix (experiments/efficiency/lengths.json), runs `--warmup` steps, then
`--steps` timed steps through `TrainRecipe.optimizer_step`, and is freed before the next. Peak memory is
torch.cuda.max_memory_allocated/reserved since the start of the timed steps (and of the model load); the
estimator's prediction (given the largest timed micro-batch's label tokens) beside it; results.json and results.md.
One process for all unless some patch kernels for the whole process (Liger): `--isolate`, medtune/bench/plan.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import math
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from medtune.bench.lengths import REPO, sample_lengths, write_length_histogram
from medtune.bench.peers.launch import peer_inputs, run_peers
from medtune.bench.plan import compose_config, isolate, load_plan, measure_in_own_process, run_order
from medtune.bench.results import add_ratios, environment, format_table, write_results
from medtune.data.packing import build_batches
from medtune.files.space import GIB
from medtune.memory.estimate import estimate
from medtune.models.anatomy import peft_base_of
from medtune.models.build import arch_config, load_tokenizer
from medtune.models.document_masks import enable_document_masking
from medtune.runtime import peak_memory, process_group, shards
from medtune.runtime.launch import env_world
from medtune.runtime.tracking import NullTracker
from medtune.training import fast_paths
from medtune.training.batches import DataPipeline
from medtune.training.recipe import TrainRecipe

__all__ = ["CONFIGS_YAML", "add_ratios", "format_table", "run_bench", "synthetic_examples", "write_length_histogram"]
log = logging.getLogger("medtune.bench")
CONFIGS_YAML = REPO / "experiments" / "efficiency" / "configs.yaml"


def synthetic_examples(hist: dict, n: int, vocab: int, max_seq_len: int, seed: int) -> list[dict]:
    """n tokenized examples of random ids whose (length, label length) follow `hist`; labels on the last tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, (total, label) in enumerate(sample_lengths(hist, n, max_seq_len, seed)):
        ids = torch.randint(3, vocab, (total,), generator=gen).tolist()  # 0-2: pad/eos/bos in Gemma and Llama
        out.append({"input_ids": ids, "labels": [-100] * (total - label) + ids[total - label :], "id": f"bench:{i}"})
        out[-1]["language"] = "en"
    return out


def _samples_needed(hist: dict, rows: int, max_seq_len: int) -> int:
    per_row = max(1, math.ceil(max_seq_len / max(hist["total_len"]["mean"], 1.0)))
    return rows * (per_row + 1) + 16


def process_started_at() -> float | None:
    """When this process started, in time.time() seconds (the OS's record: interpreter start included), or None."""
    try:
        import psutil

        return psutil.Process().create_time()
    except (ImportError, OSError):
        return None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _aggregate(steps: list[dict[str, float]]) -> dict[str, float | None]:
    """Rates over the whole timed phase: tokens and FLOPs summed, divided by the summed step time (None where a
    step lacks the rate, e.g. MFU on a CPU)."""
    seconds = sum(s["train/step_s"] for s in steps)

    def rate(key: str) -> float | None:
        values = [s.get(f"train/{key}") for s in steps]
        return (
            None if None in values else sum(v * s["train/step_s"] for v, s in zip(values, steps, strict=True)) / seconds
        )

    keys = ("useful_tokens_per_s", "padded_tokens_per_s", "tflops_per_s", "mfu", "mfu_nemo")
    return {
        "step_s": seconds / len(steps),
        **{key: rate(key) for key in keys},
        "loss_last": steps[-1]["train/loss"],
        "step_times_s": [s["train/step_s"] for s in steps],  # a recompile or a stall shows as one slow step
        "slowest_step_s": max(s["train/step_s"] for s in steps),
    }


def _peak_gib(device: torch.device) -> tuple[float | None, float | None]:
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device) / GIB, torch.cuda.max_memory_reserved(device) / GIB


def measure(cfg: Any, hist: dict, args: argparse.Namespace, out_dir: Path, profile: bool = False,
            fresh: bool = False) -> dict[str, Any]:  # fmt: skip
    """Build one configuration through TrainRecipe, run warm-up and timed steps, return its measurements.

    fresh: the first configuration of the process, whose first step is also timed from the process's start (the
    peers' `process_to_first_step_s`): imports, CUDA start-up and any one-off compile included.
    """

    dist = process_group.init(cfg.sharding, cfg.trainer.device)
    cfg, planned = fast_paths.settle(cfg, dist)  # as medtune.train: kernels, rows, recomputation for this GPU
    recipe = TrainRecipe(cfg, out_dir, NullTracker(), dist)
    loaded_at = time.perf_counter()  # the model's build: the peers' clocks start at their model load too
    try:
        peak_memory.reset_peak_memory(dist.device)
        recipe.setup_model()
        load_alloc, load_reserved = _peak_gib(dist.device)
        step = _prepare_steps(recipe, cfg, hist, args)
        attention = peft_base_of(shards.unwrap(recipe.model)).config._attn_implementation
        labels = _timed_label_tokens_per_row(recipe, cfg, args)
        ends, first_wall = [], None
        for _ in range(args.warmup):
            step()
            ends.append(time.perf_counter())  # optimizer_step synchronises the device before it returns
            first_wall = first_wall or time.time()
        peak_memory.reset_peak_memory(dist.device)
        timed = []
        for _ in range(args.steps):
            timed.append(step())
            ends.append(time.perf_counter())
            first_wall = first_wall or time.time()
        alloc, reserved = _peak_gib(dist.device)
        result = {**_aggregate(timed), "peak_alloc_gib": alloc, "peak_reserved_gib": reserved}
        result.update({"first_step_s": ends[0] - loaded_at, "wall_to_last_step_s": ends[-1] - loaded_at})
        process_start = process_started_at() if fresh else None
        if process_start is not None:
            result["process_to_first_step_s"] = first_wall - process_start
        result.update({"load_peak_alloc_gib": load_alloc, "load_peak_reserved_gib": load_reserved})
        result["attention"] = attention  # the kernel that kept packed documents apart
        result["fast_paths"] = recipe.log_fast_paths()  # after _prepare_steps enabled the document masks
        result["plan"] = {k.split("/", 1)[1]: v for k, v in planned.items()}  # plan/, trainer/ (rows), run/
        result["micro_batch_size"] = cfg.trainer.micro_batch_size
        if profile:
            result["profile"] = _profile(step, dist.device)
        # The loss chunk of the largest timed micro-batch sets the peak (the chunked loss sees only label tokens).
        est = estimate(cfg, dist.world_size, label_tokens_per_row=labels["max"])
        result.update({"label_tokens_per_row_max": labels["max"], "label_tokens_per_row_mean": labels["mean"]})
        result.update({"predicted_gib": est.peak_gib, "predicted_load_gib": est.load_peak_bytes / GIB})
        result["predicted_parts_gib"] = {k: v / GIB for k, v in est.parts.items()}
        return _across_ranks(result, dist)
    finally:
        recipe.release()  # drop model, optimizer and batches even if a traceback still holds `recipe`
        _free(dist.device)


def _prepare_steps(recipe: Any, cfg: Any, hist: dict, args: argparse.Namespace) -> Callable[[], dict[str, float]]:
    """Give the recipe synthetic data and its optimizer; returns a function that runs one optimizer step."""

    base = shards.unwrap(recipe.model)
    tc, max_len, dist = cfg.trainer, cfg.packing.max_seq_len, recipe.dist
    enable_document_masking(base, cfg.packing)
    rows = (args.warmup + args.steps + 2) * tc.grad_accum_steps * tc.micro_batch_size * dist.world_size
    examples = synthetic_examples(hist, _samples_needed(hist, rows, max_len), base.config.vocab_size, max_len, 0)
    pad_id = getattr(recipe.tokenizer, "pad_token_id", None) or 0

    def make_batches(exs: list[dict], epoch: int) -> list[dict[str, torch.Tensor]]:
        return build_batches(cfg.packing, exs, tc.micro_batch_size, pad_id, cfg.seed, epoch)

    recipe.data = DataPipeline(make_batches, examples, [], dist.rank, dist.world_size, 0)
    recipe.setup_optimizer()
    recipe.model.train()
    stream = recipe.data.train_stream({"epoch": 0, "batch": 0})

    def step() -> dict[str, float]:
        return recipe.optimizer_step([next(stream)[0] for _ in range(tc.grad_accum_steps)])

    return step


def _timed_label_tokens_per_row(recipe: Any, cfg: Any, args: argparse.Namespace) -> dict[str, float]:
    """Label tokens per row of the micro-batches the timed steps will run on this rank: their max and mean."""
    ga, rows = cfg.trainer.grad_accum_steps, cfg.trainer.micro_batch_size
    stream = recipe.data.train_stream({"epoch": 0, "batch": 0})  # a second stream over the same batches
    timed = islice(stream, args.warmup * ga, (args.warmup + args.steps) * ga)
    counts = [int(batch["n_label_tokens"]) / rows for batch, _ in timed]
    return {"max": max(counts), "mean": sum(counts) / len(counts)}


def _across_ranks(result: dict[str, Any], dist: Any) -> dict[str, Any]:
    """Memory: the busiest rank, and every rank's (`<key>_per_rank`); tokens/s: per GPU (rank 0) and summed."""

    keys = ("peak_alloc_gib", "peak_reserved_gib", "load_peak_alloc_gib", "load_peak_reserved_gib")
    everyone = process_group.all_gather_objects({k: result[k] for k in (*keys, "useful_tokens_per_s")})
    for key in keys:
        if result[key] is not None:
            result[f"{key}_per_rank"] = [r[key] for r in everyone]
            result[key] = max(r[key] for r in everyone)
    result["useful_tokens_per_s_all_gpus"] = sum(r["useful_tokens_per_s"] for r in everyone)
    result["world_size"] = dist.world_size
    return result


def _profile(step: Any, device: torch.device, n_steps: int = 2, rows: int = 25) -> str:
    """torch.profiler table of the top kernels over n_steps optimizer steps, then where the copies come from (the
    Python frames above each aten::clone / aten::copy_, most frequent first)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    frames = torch._C._profiler._ExperimentalConfig(verbose=True)  # without it torch 2.13 records no Python frames
    with profile(activities=activities, with_stack=True, record_shapes=True, experimental_config=frames) as prof:
        for _ in range(n_steps):
            step()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows)
    origins = []
    for by in ({"group_by_stack_n": 12}, {"group_by_input_shape": True}):  # backward's copies have no Python frames
        copies = [e for e in prof.key_averages(**by) if e.key in ("aten::clone", "aten::copy_")]
        copies.sort(key=lambda e: e.count, reverse=True)
        origins += [f"{e.key} x{e.count} {e.input_shapes}: " + " <- ".join(e.stack) for e in copies[:15]]
    return table + "\n\nCopies by origin, then by shape (calls over the profiled steps):\n" + "\n".join(origins) + "\n"


def run_bench(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Measure every configuration of the plan; write results.json and results.md under args.out (rank 0)."""
    plan = load_plan(Path(args.config))
    hist = json.loads(Path(args.lengths).read_text())
    world = env_world()[1]
    out = Path(args.out)
    baseline = plan.get("baseline", next(iter(plan["configurations"])))
    results = {**environment(), "started_at": dt.datetime.now().isoformat(timespec="seconds"), "gpus": world}
    results.update({"steps": args.steps, "warmup": args.warmup, "baseline": baseline, "extra_overrides": extra})
    results["lengths"] = {k: hist[k] for k in ("n_examples", "total_len", "label_len") if k in hist}
    composed = {name: compose_config(plan, name, extra, args, world) for name in plan["configurations"]}
    cfgs = {name: cfg for name, (cfg, _) in composed.items()}
    own_process = isolate(args.isolate, cfgs, world)
    order = list(cfgs) if own_process else run_order(cfgs)
    results["isolated"], by_name = own_process, {}
    for i, name in enumerate(order):
        cfg, overrides = composed[name]
        row: dict[str, Any] = {"name": name, "overrides": overrides}
        started = time.perf_counter()
        try:
            if own_process:
                row.update(measure_in_own_process(name, plan, args, extra, out / "runs" / name))
            else:
                row.update(measure(cfg, hist, args, out / "runs" / name, fresh=i == 0))
            row["status"] = "ok"
        except Exception as err:  # an OOM in one configuration must not lose the others
            log.exception("configuration %s failed", name)
            row.update({"status": "failed", "error": f"{type(err).__name__}: {err}"})
        row["wall_s"] = time.perf_counter() - started
        by_name[name] = row
        log.info("%s: %s", name, {k: v for k, v in row.items() if k not in ("predicted_parts_gib", "overrides")})
    rows = [by_name[name] for name in composed]  # in the plan's order
    if args.peers:
        rows += _peer_rows(plan, args, extra, hist, out, world)
    add_ratios(rows, baseline)
    if args.profile:
        best = max((r for r in rows if r["status"] == "ok"), key=lambda r: r["useful_tokens_per_s"], default=None)
        if best is not None:
            cfg, _ = composed[best["name"]]
            table = measure(cfg, hist, args, out, True)["profile"]
            results["profile"] = {"configuration": best["name"], "table": table}
    results["configurations"] = rows
    results["finished_at"] = dt.datetime.now().isoformat(timespec="seconds")
    if world == 1 or env_world()[0] == 0:
        write_results(results, out, baseline)
    process_group.cleanup()
    return results


def _peer_rows(plan: dict, args: argparse.Namespace, extra: list[str], hist: dict, out: Path, world: int) -> list:
    """Each peer on medtune's samples of `--peer-config` (one GPU: peers run as single processes)."""
    if world > 1:
        log.warning("--peers runs on one GPU; skipped under torchrun")
        return []
    name = args.peer_config or plan.get("baseline", next(iter(plan["configurations"])))
    cfg, _ = compose_config(plan, name, extra, args, world)
    tc, max_len = cfg.trainer, cfg.packing.max_seq_len
    config = arch_config(cfg.model.arch, cfg.model.num_layers)
    rows = (args.warmup + args.steps + 2) * tc.grad_accum_steps * tc.micro_batch_size
    examples = synthetic_examples(hist, _samples_needed(hist, rows, max_len), config.vocab_size, max_len, 0)
    inputs = peer_inputs(cfg, examples, load_tokenizer(cfg.model, config), out / "peers")
    envs = dict(item.split("=", 1) for item in args.peer_env)
    results = run_peers([p.strip() for p in args.peers.split(",") if p.strip()], inputs, cfg, args, envs)
    return [r | {"mirrors": name} for r in results]
