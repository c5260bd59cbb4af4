"""Each finished run's change from the base model, per question, for the target and protected groups.

    groups = check_groups(search_cfg, train_cfg)                     # {"lang:ko": ("lang", "ko"), "ja_exam": ...}
    table = run_changes(run_dir, groups)                             # {group: {metric: {question: run - base}}}
    stack = align([table_a, table_b], "lang:ko", "gold_ll")          # runs x questions, on the shared questions

The signal is the watch's: the gold letter's log-likelihood under the run minus under the base model, on the same
questions (paired), read from the eval stage's eval/adapter/ and eval/base/ predictions.jsonl (one row per question:
task, id, language, domain, gold_ll_letter, correct). Accuracy comes from the same rows, in percentage points. A
group is an eval set by name or `lang:<language>`, the pool of that language's medical sets (as the guard's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtune.config import ConfigError, TrainConfig
from medtune.config.search import SearchConfig
from medtune.eval.scoring import read_predictions
from medtune.eval.tasks import all_tasks

METRICS = ("gold_ll", "acc")
UNITS = {"gold_ll": "nats", "acc": "pp"}
Changes = dict[str, dict[str, dict[str, float]]]  # group -> metric -> "task/id" -> run minus base


def check_groups(scfg: SearchConfig, cfg: TrainConfig) -> list[str]:
    """The target and protected groups, each scored by the runs' eval stage; ConfigError names the fix."""
    tasks = all_tasks(cfg.data)
    scored = list(cfg.eval.tasks)
    langs = sorted({tasks[t].language for t in scored if t in tasks and tasks[t].domain == "medical"})
    for key in ("target", "protect"):
        for group in getattr(scfg, key):
            if group.startswith("lang:"):
                if group[5:] not in langs:
                    raise ConfigError(
                        f"search.{key} names {group}, but eval.tasks {scored} has no medical set in that language "
                        f"(languages scored: {langs}); add one to eval.tasks or name another group."
                    )
            elif group not in scored:
                raise ConfigError(
                    f"search.{key} names {group!r}, which is not in eval.tasks {scored}; add it to eval.tasks or "
                    "name a set that is scored (or lang:<language>)."
                )
    return [*scfg.target, *scfg.protect]


def _rows(path: Path) -> dict[str, dict]:
    """The eval stage's rows by "task/id", read as every reader of predictions.jsonl does (a torn line: ValueError
    naming the file and line)."""
    return {f"{r['task']}/{r['id']}": r for r in read_predictions(path)}


def _member(row: dict, group: str) -> bool:
    if group.startswith("lang:"):
        return row.get("language") == group[5:] and row.get("domain", "medical") == "medical"
    return row["task"] == group


def run_changes(run_dir: Path, groups: list[str]) -> Changes:
    """{group: {metric: {question: run - base}}} from a run's eval predictions; ValueError when they are missing."""
    base_path, run_path = (
        run_dir / "eval" / "base" / "predictions.jsonl",
        run_dir / "eval" / "adapter" / "predictions.jsonl",
    )
    if not (base_path.is_file() and run_path.is_file()):
        raise ValueError(f"{run_dir}: no eval/base and eval/adapter predictions.jsonl (did the eval stage run?)")
    base, run = _rows(base_path), _rows(run_path)
    out: Changes = {}
    for group in groups:
        keys = [k for k, r in run.items() if k in base and _member(r, group)]
        if not keys:
            raise ValueError(f"{run_dir}: no scored question belongs to {group}")
        out[group] = {
            "gold_ll": {k: float(run[k]["gold_ll_letter"]) - float(base[k]["gold_ll_letter"]) for k in keys},
            "acc": {k: 100.0 * (float(bool(run[k]["correct"])) - float(bool(base[k]["correct"]))) for k in keys},
        }
    return out


def align(tables: list[Changes], group: str, metric: str) -> np.ndarray:
    """runs x questions: each run's change on the questions every run scored (sorted, so columns pair up)."""
    shared = set.intersection(*(set(t[group][metric]) for t in tables))
    keys = sorted(shared)
    if not keys:
        raise ValueError(f"the runs share no scored question of {group}")
    return np.array([[t[group][metric][k] for k in keys] for t in tables], dtype=np.float64)
