"""Differences between two models on the same questions: accuracy and gold log-likelihood, with paired statistics.

    rows = forgetting(base_rows, run_rows)          # per language pool and per task
    forgetting_metrics(rows)                        # flat keys forgetting/<group>/delta_pp, ..._ci_low, p_mcnemar
    print(format_forgetting(rows))                  # a table that says "not significant" when it is not

Each row also records the level and the bootstrap that produced its intervals (`confidence`, `bootstrap_samples`,
`bootstrap_seed`, hence forgetting/<group>/bootstrap_samples ...); a NaN or infinite gold log-likelihood makes that
delta "not testable" (p nan, `<key>_testable` false), never significant.

Compare any two runs from the command line (their eval/<label>/predictions.jsonl):

    python -m medtune.eval.forgetting runs/a/eval/base/predictions.jsonl runs/b/eval/adapter/predictions.jsonl

delta = run - base: a negative accuracy delta is forgetting; a positive gold log-likelihood delta means the run puts
more probability on the right answer.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtune.eval.scoring import read_predictions
from medtune.eval.stats import (
    format_alpha,
    format_level,
    mcnemar_test,
    paired_bootstrap_ci,
    recorded_level,
    sign_flip_test,
)
from medtune.eval.summary import group_rows

log = logging.getLogger(__name__)
LL_KEYS = ("gold_ll_letter", "gold_ll_text")


def _pair(base_rows: Sequence[dict], run_rows: Sequence[dict]) -> list[tuple[dict, dict]]:
    base = {(r["task"], r["id"]): r for r in base_rows}
    pairs = [(base[(r["task"], r["id"])], r) for r in run_rows if (r["task"], r["id"]) in base]
    missing = len(run_rows) - len(pairs)
    if missing:
        log.warning("forgetting: %d of %d questions have no base prediction and are left out", missing, len(run_rows))
    return pairs


def cluster_of(row: dict[str, Any], cluster_by: str) -> str:
    """The cluster a prediction row belongs to under eval.cluster_by (a row key, or "exam": see EvalConfig)."""
    if cluster_by != "exam":
        if cluster_by not in row:
            raise ValueError(f"eval.cluster_by={cluster_by}: prediction rows have no {cluster_by!r}; keys: {list(row)}")
        return str(row[cluster_by])
    native = str(row["id"]).rsplit(":", 1)[-1]
    exam, _, number = native.rpartition("-")
    if not exam or not number.isdigit():
        raise ValueError(
            f"eval.cluster_by=exam: question {row['id']!r} ({row['task']}) names no exam (<exam>-<number>); "
            "cluster by subject or task instead."
        )
    return exam


def _compare(
    pairs: list[tuple[dict, dict]], confidence: float, n_boot: int, seed: int, cluster_by: str | None = None
) -> dict[str, Any]:
    base_ok = [bool(b["correct"]) for b, _ in pairs]
    run_ok = [bool(r["correct"]) for _, r in pairs]
    clusters = None if cluster_by is None else [cluster_of(r, cluster_by) for _, r in pairs]
    if clusters is not None and len(set(clusters)) < 2:
        log.warning("forgetting: %d questions, one %s cluster: no cluster bootstrap interval", len(pairs), cluster_by)
    low, high = paired_bootstrap_ci(base_ok, run_ok, confidence, n_boot, seed, clusters)
    mc = mcnemar_test(base_ok, run_ok)
    alpha = 1.0 - confidence
    row: dict[str, Any] = {
        "n": len(pairs),
        "base_acc": float(np.mean(base_ok)),
        "run_acc": float(np.mean(run_ok)),
        "delta_pp": 100.0 * (float(np.mean(run_ok)) - float(np.mean(base_ok))),
        "delta_pp_ci_low": 100.0 * low,
        "delta_pp_ci_high": 100.0 * high,
        "b_base_only": mc.b,
        "c_run_only": mc.c,
        "p_mcnemar": mc.p_exact,
        "p_mcnemar_mid": mc.p_mid,
        "significant": mc.p_exact < alpha,
    }
    for key in LL_KEYS:
        row |= _ll_delta(key, pairs, confidence, n_boot, seed, clusters)
    if clusters is not None:  # a cluster bootstrap: over what, and how many clusters this group has
        row |= {"cluster_by": cluster_by, "n_clusters": len(set(clusters))}
    # what produced the intervals and p-values above, beside them (forgetting.json, forgetting/<group>/... keys)
    return row | {"confidence": confidence, "bootstrap_samples": n_boot, "bootstrap_seed": seed}


def _ll_delta(
    key: str, pairs: list[tuple[dict, dict]], confidence: float, n_boot: int, seed: int, clusters: list | None
) -> dict[str, Any]:
    """Mean paired change of one gold log-likelihood, its bootstrap interval and sign-flip p; not testable (nan p,
    `<key>_testable` false, never significant) when a value is NaN or infinite."""
    b = [float(x[key]) for x, _ in pairs]
    r = [float(y[key]) for _, y in pairs]
    low, high = paired_bootstrap_ci(b, r, confidence, n_boot, seed, clusters)
    p = sign_flip_test(b, r, n_boot, seed)
    ok = math.isfinite(p)
    if not ok:
        bad = sum(not (math.isfinite(x) and math.isfinite(y)) for x, y in zip(b, r, strict=True))
        log.warning("forgetting: %d of %d questions have a non-finite %s: its delta is not testable", bad, len(b), key)
    return {
        f"{key}_delta": float(np.mean(r) - np.mean(b)),
        f"{key}_ci_low": low,
        f"{key}_ci_high": high,
        f"{key}_p": p,
        f"{key}_significant": ok and p < 1.0 - confidence,
        f"{key}_testable": ok,
    }


def forgetting(
    base_rows: Sequence[dict],
    run_rows: Sequence[dict],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    cluster_by: str | None = None,
) -> list[dict[str, Any]]:
    """One comparison row per language pool (lang/<language>) and per task, over the questions both scored; with
    `cluster_by` (eval.cluster_by) the paired intervals resample clusters of questions instead of questions."""
    pairs = _pair(base_rows, run_rows)
    if not pairs:
        raise ValueError("forgetting: the two prediction sets share no (task, id); were they scored on the same data?")
    by_key = {(r["task"], r["id"]): (b, r) for b, r in pairs}
    out = []
    for group, members in group_rows([r for _, r in pairs]).items():
        group_pairs = [by_key[(m["task"], m["id"])] for m in members]
        out.append({"group": group, **_compare(group_pairs, confidence, n_boot, seed, cluster_by)})
    # Language pools first: they carry the headline numbers.
    return sorted(out, key=lambda row: (not row["group"].startswith("lang/"), row["group"]))


def forgetting_metrics(rows: Sequence[dict[str, Any]], prefix: str = "forgetting") -> dict[str, float]:
    """Flat keys: forgetting/<ko|en|task>/delta_pp, _ci_low, _ci_high, p_mcnemar, gold_ll_*_delta ..."""
    out = {}
    for row in rows:
        group = row["group"].removeprefix("lang/")
        for key, value in row.items():
            if key not in ("group", "cluster_by"):  # cluster_by names a key: in forgetting.json, not a metric
                out[f"{prefix}/{group}/{key}"] = float(value)
    return out


def verdict(significant: Any, p: Any) -> str:
    """'significant', 'not significant', or 'not testable' when the p-value is missing or not finite."""
    if p is None or not math.isfinite(float(p)):
        return "not testable"
    # a flag read back from a table may be NaN, which is truthy: it is no claim of significance
    return "significant" if significant and significant == significant else "not significant"


def _num(value: float, fmt: str) -> str:
    return fmt.format(value) if math.isfinite(value) else "n/a"


def _delta_cell(row: dict[str, Any], delta_key: str, ci_key: str, fmt: str) -> str:
    """'delta [low, high]', or n/a for a delta that is not a number."""
    delta, low, high = row[delta_key], row[f"{ci_key}_ci_low"], row[f"{ci_key}_ci_high"]
    if not math.isfinite(delta):
        return "n/a"
    return f"{_num(delta, fmt)} [{_num(low, fmt)}, {_num(high, fmt)}]"


def format_forgetting(rows: Sequence[dict[str, Any]], confidence: float | None = None) -> str:
    """Markdown table: delta [CI], McNemar p, verdict; the gold log-likelihood deltas; the bootstrap used.

    The level is the one the rows were computed at; `confidence`, when given, must be that level.
    """
    level = format_level(recorded_level((r.get("confidence") for r in rows), confidence, "these forgetting rows"))
    lines = [
        f"| group | n | base % | run % | delta pp [{level} CI] | McNemar p | accuracy | "
        f"gold LL letter delta [{level} CI] | p | gold LL text delta [{level} CI] | p |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["group"], str(r["n"]), f"{100 * r['base_acc']:.2f}", f"{100 * r['run_acc']:.2f}"]
        cells += [_delta_cell(r, "delta_pp", "delta_pp", "{:+.2f}"), _num(r["p_mcnemar"], "{:.3g}")]
        cells.append(verdict(r["significant"], r["p_mcnemar"]))
        for key in LL_KEYS:
            p = r[f"{key}_p"]
            cells.append(_delta_cell(r, f"{key}_delta", key, "{:+.3f}"))
            cells.append(f"{_num(p, '{:.3g}')} {verdict(r[f'{key}_significant'], p)}")
        lines.append("| " + " | ".join(cells) + " |")
    if rows and "bootstrap_samples" in rows[0]:
        lines += ["", _bootstrap_note(rows[0])]
    return "\n".join(lines)


def _bootstrap_note(row: dict[str, Any]) -> str:
    unit = f"clusters of questions by {row['cluster_by']}" if row.get("cluster_by") else "questions"
    return (
        f"Intervals: paired percentile bootstrap over {unit}, {row['bootstrap_samples']} resamples, seed "
        f"{row['bootstrap_seed']}; gold LL p: sign-flip randomisation test with as many flips. Verdicts at p < "
        f"{format_alpha(row['confidence'])}; not testable: a NaN or infinite log-likelihood."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Compare two prediction files from the command line and print the table."""
    parser = argparse.ArgumentParser(description="Paired comparison of two medtune evaluations.")
    parser.add_argument("base", type=Path, help="predictions.jsonl of the reference (e.g. the base model)")
    parser.add_argument("run", type=Path, help="predictions.jsonl of the run to compare")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster-by", default=None, help="resample clusters sharing this key (eval.cluster_by)")
    args = parser.parse_args(argv)
    base, run = read_predictions(args.base), read_predictions(args.run)
    rows = forgetting(base, run, args.confidence, args.n_boot, args.seed, args.cluster_by)
    print(format_forgetting(rows, args.confidence))


if __name__ == "__main__":
    main()
