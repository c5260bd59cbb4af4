"""What the forgetting watch costs on this machine: the scorer alone, and the training loop against a control.

    python experiments/watch_cost/bench.py --out experiments/results/watch_cost_cpu --repeats 3

Model: a random Gemma 3 layout with Gemma 3's 262k vocabulary and four narrow layers
(experiments/watch_cost/gemma3_wide_vocab.json, fp32, LoRA on every linear layer as the defaults), Gemma 3's real
tokenizer (`model.tokenizer=gemma3_270m`, so the watched prompts have their real lengths). Watch sets: the GPU run's
(kormed_law, kormedmcqa_doctor, medqa_4opt; experiments/results/mix_watch), seeded.

1. scorer: one watch (every set's questions, `--scorer-limit` each) through `score_watch`, as the watcher calls
   it inside `scoring_view`: `before` = the scorer before token budgets (16 questions per forward), `after` = the
   defaults (`eval.watch_batch_tokens`); alternated, `--repeats` times. Also the forwards and padded tokens.
2. loop: `TrainRecipe.train()` for `--steps` steps, three variants alternated `--repeats` times, same seed and
   data: `control` (no watch), `watch_before` (eval.watch_batch_size=16, no token budget), `watch_after` (the
   defaults), the watch every `--every` steps on `--loop-limit` questions per set, each run with an empty base-score
   cache (the base is scored in every run: the worst case). Overhead = loop time / the control's loop time - 1.
   The defaults watch ~0.46 prompt tokens per trained token between two watches (8 x 3 questions against 10 steps of
   1 x 1024 tokens), as the GPU run did (37,673 against 10 x 8,192).

Writes OUT/results.json (every measurement) and OUT/results.md (medians and ranges).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from medtune.config import register_configs, to_train_config
from medtune.eval.logprobs import length_batches
from medtune.eval.watch import score_watch
from medtune.runtime.process_group import DistInfo
from medtune.runtime.shards import scoring_view
from medtune.training.recipe import TrainRecipe
from medtune.training.run import seed_everything

HERE = Path(__file__).resolve().parent
CONF = HERE.parents[1] / "medtune" / "conf"
SETS = "[kormed_law,kormedmcqa_doctor,medqa_4opt]"
BEFORE = ["eval.watch_batch_size=16", "eval.watch_batch_tokens=1000000000"]  # 16 rows, no token budget


class _Quiet:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass


def _config(args: argparse.Namespace, cache: str, *extra: str) -> Any:
    overrides = [
        "model.source=builtin", f"model.arch={HERE / 'gemma3_wide_vocab.json'}", "model.init=random",
        "model.dtype=float32", "model.name=gemma3_wide_vocab", "model.tokenizer=gemma3_270m",
        "trainer.device=cpu", "trainer.progress_bar=false", "trainer.log_every=1", "trainer.eval_every=0",
        f"trainer.max_steps={args.steps}", f"trainer.micro_batch_size={args.rows}",
        f"packing.max_seq_len={args.seq_len}", "logger=jsonl", "eval=none", f"eval.watch={SETS}",
        f"eval.watch_every={args.every}", f"eval.cache_dir={cache}", "stage=train", "seed=0", *extra,
    ]  # fmt: skip
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return to_train_config(compose("train", overrides=overrides))


def _recipe(cfg: Any, run_dir: Path) -> TrainRecipe:
    seed_everything(cfg.seed)  # as training.run does: the same random base and adapter weights in every run
    recipe = TrainRecipe(cfg, run_dir, _Quiet(), DistInfo(0, 1, 0, torch.device("cpu")))
    recipe.setup()
    return recipe


def scorer(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One watch through score_watch, before and after, alternated."""
    cfg = _config(args, str(tmp / "cache0"), f"eval.watch_limit={args.scorer_limit}")
    recipe = _recipe(cfg, tmp / "scorer")
    sets = recipe.watcher.sets
    lengths = [len(p) for s in sets for p in s.prompts]
    variants = {"before": (16, None), "after": (cfg.eval.watch_batch_size, cfg.eval.watch_batch_tokens)}
    out: dict[str, Any] = {"questions": len(lengths), "prompt_tokens": sum(lengths), "variants": {}}
    for name, (rows, tokens) in variants.items():
        batches = length_batches(lengths, rows, tokens)
        padded = sum(len(b) * lengths[b[0]] for b in batches)
        out["variants"][name] = {"batch_size": rows, "batch_tokens": tokens, "forwards": len(batches),
                                 "padded_tokens": padded, "seconds": []}  # fmt: skip
    scores = {}
    with scoring_view(recipe.model) as plain:
        score_watch(plain, sets, 16)  # warm-up
        for _ in range(args.repeats):
            for name, (rows, tokens) in variants.items():
                started = time.perf_counter()
                scores[name] = score_watch(plain, sets, rows, None, tokens)
                out["variants"][name]["seconds"].append(time.perf_counter() - started)
    diffs = [abs(a - b) for s in sets for qa, qb in zip(scores["before"][s.name], scores["after"][s.name], strict=True)
             for a, b in zip(qa, qb, strict=True)]  # fmt: skip
    out["max_abs_diff_nats"] = max(diffs)
    return out


def loop(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The training loop with and without the watch, alternated."""
    limit = f"eval.watch_limit={args.loop_limit}"
    variants = {"control": ["eval.watch_every=0", "eval.watch=[]"], "watch_before": [limit, *BEFORE],
                "watch_after": [limit]}  # fmt: skip
    out: dict[str, Any] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, extra in variants.items():
            cache = tmp / f"cache_{name}_{repeat}"
            recipe = _recipe(_config(args, str(cache), *extra), tmp / f"{name}_{repeat}")
            last = recipe.train()
            keys = ("train/loop_s", "watch/total_s", "watch/base_s", "watch/overhead_frac", "train/loss")
            out[name].append({k: last[k] for k in keys if k in last})
            print(name, repeat, out[name][-1], flush=True)
            del recipe
    return out


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def write(out: Path, result: dict[str, Any]) -> None:
    """results.json and results.md (median [min, max] over the repeats)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Watch cost on {result['machine']} ({result['threads']} threads), {result['repeats']} repeats", ""]
    if "scorer" in result:
        lines += _scorer_lines(result["scorer"])
    if "loop" in result:
        lines += _loop_lines(result["loop"])
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _scorer_lines(sc: dict[str, Any]) -> list[str]:
    lines = [f"## One watch: {sc['questions']} questions, {sc['prompt_tokens']} prompt tokens", "",
             "| scorer | forwards | padded tokens | seconds, median [min, max] |", "|---|---|---|---|"]  # fmt: skip
    for name, v in sc["variants"].items():
        lines.append(f"| {name} | {v['forwards']} | {v['padded_tokens']} | {_spread(v['seconds'])} |")
    return [*lines, "", f"Largest |before - after| over every option letter: {sc['max_abs_diff_nats']:.2e} nats.", ""]


def _loop_lines(lp: dict[str, Any]) -> list[str]:
    control = [r["train/loop_s"] for r in lp["control"]]
    lines = ["## Training loop against the control", "",
             "| variant | loop s | watch s (base s) | overhead vs control |", "|---|---|---|---|"]  # fmt: skip
    for name, runs in lp.items():
        loop_s = [r["train/loop_s"] for r in runs]
        over = [s / c - 1 for s, c in zip(loop_s, control, strict=True)]  # each repeat against its own control
        watch_s = [r.get("watch/total_s", 0.0) for r in runs]
        base_s = [r.get("watch/base_s", 0.0) for r in runs]
        lines.append(f"| {name} | {_spread(loop_s)} | {_spread(watch_s)} ({_spread(base_s)}) | {_spread(over)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--scorer-limit", type=int, default=64)
    parser.add_argument("--loop-limit", type=int, default=8)
    parser.add_argument("--only", choices=["scorer", "loop"], default=None)
    args = parser.parse_args()
    register_configs()
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                              "repeats": args.repeats, "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "loop":
            result["scorer"] = scorer(args, Path(tmp))
            print(json.dumps(result["scorer"]), flush=True)
        if args.only != "scorer":
            result["loop"] = loop(args, Path(tmp))
    write(args.out, result)


if __name__ == "__main__":
    main()
