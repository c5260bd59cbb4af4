"""The watch's numbers: each set's and each language's change from the base model, with a paired interval.

    metrics = watch_metrics(sets, base, run, confidence=0.95)   # watch/<set>/delta_gold_ll, watch/lang/ko/...
    test = group_change(sets, base, run, "lang/ko", "gold_ll", level=0.95)   # what the guard and keep read

Groups: every set by its name, and `lang/<language>` pooling the questions of that language's medical sets (general
probes such as mmlu_general stay on their own, as in the eval stage's tables). A change is run minus base on the
same questions: the mean gold-letter log-likelihood in nats (`delta_gold_ll`) and, when asked, the letter accuracy
in percentage points (`delta_acc_pp`), each with a paired percentile bootstrap interval over questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtune.config import WORST_LANG
from medtune.eval.stats import paired_bootstrap_ci
from medtune.eval.watch import Scores, WatchSet

UNITS = {"gold_ll": 1.0, "acc": 100.0}  # acc changes are stated in percentage points
DELTA_KEYS = {"gold_ll": "delta_gold_ll", "acc": "delta_acc_pp"}


def group_key(name: str) -> str:
    """A config's group name as the metrics spell it: lang:ko -> lang/ko; a set's name stays."""
    return name.replace("lang:", "lang/", 1) if name.startswith("lang:") else name


def watch_groups(sets: Sequence[WatchSet]) -> dict[str, list[str]]:
    """{group: the sets whose questions it pools}: each set, then each language's medical sets."""
    groups = {s.name: [s.name] for s in sets}
    for s in sets:
        if s.domain == "medical":
            groups.setdefault(f"lang/{s.language}", []).append(s.name)
    return groups


def per_question(sets: Sequence[WatchSet], scores: Scores, metric: str) -> dict[str, np.ndarray]:
    """{set: one value per question}: the gold letter's log-probability, or 1.0/0.0 for a right/wrong argmax."""
    out = {}
    for s in sets:
        lls = scores[s.name]
        if metric == "gold_ll":
            out[s.name] = np.array([q[g] for q, g in zip(lls, s.golds, strict=True)], dtype=np.float64)
        else:
            out[s.name] = np.array([float(np.argmax(q) == g) for q, g in zip(lls, s.golds, strict=True)])
    return out


def group_change(
    sets: Sequence[WatchSet],
    base: Scores,
    run: Scores,
    group: str,
    metric: str,
    level: float,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """One group's run and base means, the change and its paired interval at `level` (in the metric's unit)."""
    members = watch_groups(sets)[group_key(group)]
    b_all, r_all = per_question(sets, base, metric), per_question(sets, run, metric)
    b = np.concatenate([b_all[m] for m in members])
    r = np.concatenate([r_all[m] for m in members])
    low, high = paired_bootstrap_ci(b, r, level, n_boot, seed)
    unit = UNITS[metric]
    return {
        "run": float(r.mean()),
        "base": float(b.mean()),
        "delta": unit * float(r.mean() - b.mean()),
        "ci_low": unit * low,
        "ci_high": unit * high,
        "n": float(len(r)),
    }


def watch_metrics(
    sets: Sequence[WatchSet],
    base: Scores,
    run: Scores,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    accuracy: bool = False,
) -> dict[str, float]:
    """Flat watch/<group>/... keys for every group; watch/worst_lang/delta_gold_ll is the lowest language's."""
    out: dict[str, float] = {}
    for group in watch_groups(sets):
        for metric in ("gold_ll", "acc") if accuracy else ("gold_ll",):
            got = group_change(sets, base, run, group, metric, confidence, n_boot, seed)
            delta = DELTA_KEYS[metric]
            out |= {f"watch/{group}/{metric}": got["run"], f"watch/{group}/base_{metric}": got["base"]}
            out |= {f"watch/{group}/{delta}": got["delta"], f"watch/{group}/n": got["n"]}
            out |= {f"watch/{group}/{delta}_ci_low": got["ci_low"], f"watch/{group}/{delta}_ci_high": got["ci_high"]}
    langs = [k for k in out if k.startswith("watch/lang/") and k.endswith("/delta_gold_ll")]
    if langs:
        out[f"watch/{WORST_LANG}/delta_gold_ll"] = min(out[k] for k in langs)
    return out | {"watch/confidence": confidence}


def criterion(metrics: dict[str, Any], keep_by: str) -> float:
    """The value `trainer.keep_by` ranks watched steps by (higher is better): a group's delta_gold_ll."""
    return float(metrics[f"watch/{group_key(keep_by)}/delta_gold_ll"])
