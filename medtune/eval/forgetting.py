"""Differences between two models on the same questions: accuracy and gold log-likelihood, with paired statistics.

    rows = forgetting(base_rows, run_rows)          # per language pool and per task
    forgetting_metrics(rows)                        # flat keys forgetting/<group>/delta_pp, ..._ci_low, p_mcnemar
    print(format_forgetting(rows))                  # a table that says "not significant" when it is not

Compare any two runs from the command line (their eval/<label>/predictions.jsonl):

    python -m medtune.eval.forgetting runs/a/eval/base/predictions.jsonl runs/b/eval/adapter/predictions.jsonl

delta = run - base: a negative accuracy delta is forgetting; a positive gold log-likelihood delta means the run puts
more probability on the right answer.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtune.eval.runner import read_predictions
from medtune.eval.stats import mcnemar_test, paired_bootstrap_ci, sign_flip_test
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


def _compare(pairs: list[tuple[dict, dict]], confidence: float, n_boot: int, seed: int) -> dict[str, Any]:
    base_ok = [bool(b["correct"]) for b, _ in pairs]
    run_ok = [bool(r["correct"]) for _, r in pairs]
    low, high = paired_bootstrap_ci(base_ok, run_ok, confidence, n_boot, seed)
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
        b = [float(x[key]) for x, _ in pairs]
        r = [float(y[key]) for _, y in pairs]
        ll_low, ll_high = paired_bootstrap_ci(b, r, confidence, n_boot, seed)
        p = sign_flip_test(b, r, n_boot, seed)
        row |= {
            f"{key}_delta": float(np.mean(r) - np.mean(b)),
            f"{key}_ci_low": ll_low,
            f"{key}_ci_high": ll_high,
            f"{key}_p": p,
            f"{key}_significant": p < alpha,
        }
    return row


def forgetting(
    base_rows: Sequence[dict],
    run_rows: Sequence[dict],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One comparison row per language pool (lang/<language>) and per task, over the questions both scored."""
    pairs = _pair(base_rows, run_rows)
    if not pairs:
        raise ValueError("forgetting: the two prediction sets share no (task, id); were they scored on the same data?")
    by_key = {(r["task"], r["id"]): (b, r) for b, r in pairs}
    out = []
    for group, members in group_rows([r for _, r in pairs]).items():
        group_pairs = [by_key[(m["task"], m["id"])] for m in members]
        out.append({"group": group, **_compare(group_pairs, confidence, n_boot, seed)})
    # Language pools first: they carry the headline numbers.
    return sorted(out, key=lambda row: (not row["group"].startswith("lang/"), row["group"]))


def forgetting_metrics(rows: Sequence[dict[str, Any]], prefix: str = "forgetting") -> dict[str, float]:
    """Flat keys: forgetting/<ko|en|task>/delta_pp, _ci_low, _ci_high, p_mcnemar, gold_ll_*_delta ..."""
    out = {}
    for row in rows:
        group = row["group"].removeprefix("lang/")
        for key, value in row.items():
            if key != "group":
                out[f"{prefix}/{group}/{key}"] = float(value)
    return out


def _verdict(significant: bool) -> str:
    return "significant" if significant else "not significant"


def format_forgetting(rows: Sequence[dict[str, Any]], confidence: float = 0.95) -> str:
    """Markdown table: delta [CI], McNemar p, verdict; and the gold log-likelihood deltas."""
    pct = round(100 * confidence)
    lines = [
        f"| group | n | base % | run % | delta pp [{pct}% CI] | McNemar p | accuracy | "
        f"gold LL letter delta [{pct}% CI] | p | gold LL text delta [{pct}% CI] | p |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['n']} | {100 * r['base_acc']:.2f} | {100 * r['run_acc']:.2f} | "
            f"{r['delta_pp']:+.2f} [{r['delta_pp_ci_low']:+.2f}, {r['delta_pp_ci_high']:+.2f}] | "
            f"{r['p_mcnemar']:.3g} | {_verdict(r['significant'])} | "
            f"{r['gold_ll_letter_delta']:+.3f} [{r['gold_ll_letter_ci_low']:+.3f}, {r['gold_ll_letter_ci_high']:+.3f}]"
            f" | {r['gold_ll_letter_p']:.3g} {_verdict(r['gold_ll_letter_significant'])} | "
            f"{r['gold_ll_text_delta']:+.3f} [{r['gold_ll_text_ci_low']:+.3f}, {r['gold_ll_text_ci_high']:+.3f}]"
            f" | {r['gold_ll_text_p']:.3g} {_verdict(r['gold_ll_text_significant'])} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Compare two prediction files from the command line and print the table."""
    parser = argparse.ArgumentParser(description="Paired comparison of two medtune evaluations.")
    parser.add_argument("base", type=Path, help="predictions.jsonl of the reference (e.g. the base model)")
    parser.add_argument("run", type=Path, help="predictions.jsonl of the run to compare")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = forgetting(read_predictions(args.base), read_predictions(args.run), args.confidence, args.n_boot, args.seed)
    print(format_forgetting(rows, args.confidence))


if __name__ == "__main__":
    main()
