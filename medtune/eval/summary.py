"""Flat metrics from prediction rows: per task and per language, accuracy with n and a Wilson interval.

    summarise(rows, prefix="eval", confidence=0.95) -> {"eval/medqa_4opt/acc": ..., "eval/lang/en/acc": ...}
    print(format_table(metrics, "eval"))                # "| group | acc % | 95% CI | ...": the level used

Language pools are micro-averages over the questions of that language's medical tasks; general-knowledge probes
(domain "general", e.g. mmlu_general) stay per task so that they never dilute the medical score. Each group records
the level of its Wilson interval (`<prefix>/<group>/confidence`), so a table or report cannot relabel it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtune.eval.stats import format_level, recorded_level, wilson_interval
from medtune.eval.tasks import TASKS


def pool_name(row: dict[str, Any]) -> str | None:
    """The language pool a prediction row counts towards (None for general probes)."""
    spec = TASKS.get(row["task"])
    # rows written before they carried their domain name a built-in task; a declared dataset's rows carry it
    domain = row.get("domain") or (spec.domain if spec is not None else "medical")
    return row["language"] if domain == "medical" else None


def group_rows(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """{<task>: rows, 'lang/<language>': rows} in a stable order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["task"], []).append(row)
    for row in rows:
        pool = pool_name(row)
        if pool is not None:
            groups.setdefault(f"lang/{pool}", []).append(row)
    return groups


def block_metrics(rows: Sequence[dict[str, Any]], confidence: float) -> dict[str, float]:
    """acc, its interval, n, chance rate and mean gold log-likelihoods of one group of questions."""
    n = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    low, high = wilson_interval(correct, n, confidence)
    return {
        "acc": correct / n if n else float("nan"),
        "acc_ci_low": low,
        "acc_ci_high": high,
        "n": float(n),
        "chance": float(np.mean([1.0 / r["n_choices"] for r in rows])) if n else float("nan"),
        "gold_ll_letter": float(np.mean([r["gold_ll_letter"] for r in rows])) if n else float("nan"),
        "gold_ll_text": float(np.mean([r["gold_ll_text"] for r in rows])) if n else float("nan"),
        "confidence": confidence,  # the level of acc_ci_low/high, recorded beside them
    }


def summarise(rows: Sequence[dict[str, Any]], prefix: str = "eval", confidence: float = 0.95) -> dict[str, float]:
    """Flat metric dict for every task and language pool."""
    out = {}
    for group, members in group_rows(rows).items():
        for key, value in block_metrics(members, confidence).items():
            out[f"{prefix}/{group}/{key}"] = value
    return out


def format_table(metrics: dict[str, float], prefix: str = "eval", confidence: float | None = None) -> str:
    """A markdown table of acc [CI], n and gold log-likelihoods per task / language, labelled with the level the
    intervals were computed at (`confidence` only for metrics that do not record it)."""
    levels = (v for k, v in metrics.items() if k.startswith(prefix + "/") and k.endswith("/confidence"))
    level = format_level(recorded_level(levels, confidence, f"the {prefix}/... intervals"))
    groups = sorted({k[len(prefix) + 1 : k.rindex("/")] for k in metrics if k.startswith(prefix + "/")})
    lines = [
        f"| group | acc % | {level} CI | n | chance % | gold LL letter | gold LL text |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        m = {k.rsplit("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{prefix}/{g}/")}
        lines.append(
            f"| {g} | {100 * m['acc']:.2f} | [{100 * m['acc_ci_low']:.1f}, {100 * m['acc_ci_high']:.1f}] "
            f"| {int(m['n'])} | {100 * m['chance']:.1f} | {m['gold_ll_letter']:.3f} | {m['gold_ll_text']:.3f} |"
        )
    return "\n".join(lines)
