"""Checks that stop a broken evaluation before its numbers are believed.

- identical letter logits: every question gives every answer letter the same log-likelihood (a mis-converted model:
  transformers 5.17 turned Gemma 3 270M's GGUF into exactly that, see ../shared/GPU.md);
- one letter everywhere: every prediction of a task is the same letter while the gold answers are not. For the base
  model this means a broken model or scoring and stops the run; for a fine-tuned adapter it is a finding about the
  training (a small model fine-tuned on answer letters can collapse onto one), reported loudly without stopping;
- below the random-guess floor: even the upper end of a 99.9% interval is under the chance rate. Under half the
  chance rate it stops the run (a scoring bug, or an answer key that does not match the options); between half and
  the full chance rate it is a loud warning only, because a weak model with a letter bias really does score there
  (Gemma 3 270M base on MedQA 4-option: 21.0% of 1,273, upper bound 24.6% < 25%, on an H100, 2026-11-25).

`check_predictions(rows, mode)` raises EvalSanityError on a fatal finding (mode "error"), logs loudly (mode "warn",
and every warning-level finding), or does nothing (mode "off").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from medtune.eval.stats import wilson_interval

log = logging.getLogger(__name__)
MIN_QUESTIONS_ONE_LETTER = 20
FLOOR_CONFIDENCE = 0.999
IDENTICAL_TOL = 1e-6


class EvalSanityError(RuntimeError):
    """The evaluation is broken; the message says which check failed and on which task."""


def identical_letter_logits(rows: Sequence[dict[str, Any]]) -> bool:
    """True when every question gives all its answer letters the same log-likelihood."""
    return bool(rows) and all(max(r["letter_lls"]) - min(r["letter_lls"]) < IDENTICAL_TOL for r in rows)


def one_letter_everywhere(rows: Sequence[dict[str, Any]]) -> str | None:
    """The letter predicted for every question when the gold answers vary; None otherwise."""
    preds = {r["pred"] for r in rows}
    golds = {r["gold"] for r in rows}
    if len(rows) >= MIN_QUESTIONS_ONE_LETTER and len(preds) == 1 and len(golds) > 1:
        return next(iter(preds))
    return None


def below_chance_floor(rows: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    """(accuracy, chance) when the 99.9% Wilson upper bound of accuracy is below chance; None otherwise."""
    if not rows:
        return None
    correct = sum(bool(r["correct"]) for r in rows)
    chance = sum(1.0 / r["n_choices"] for r in rows) / len(rows)
    _, high = wilson_interval(correct, len(rows), FLOOR_CONFIDENCE)
    return (correct / len(rows), chance) if high < chance else None


def problems(rows: Sequence[dict[str, Any]], collapse_fatal: bool = True) -> list[tuple[str, str]]:
    """Every failed check, per task, as (severity, sentence); severity is "fatal" or "warning"."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    found = []
    for task, members in by_task.items():
        if identical_letter_logits(members):
            found.append(
                (
                    "fatal",
                    f"{task}: every answer letter has the same log-likelihood on all {len(members)} "
                    "questions; the model is broken (e.g. a bad GGUF conversion: use transformers >= 5.24) or "
                    "its logits are constant.",
                )
            )
        elif (letter := one_letter_everywhere(members)) is not None:
            found.append(
                (
                    "fatal" if collapse_fatal else "warning",
                    f"{task}: the model predicts '{letter}' for all {len(members)} questions "
                    "(collapsed onto one letter; its accuracy is that letter's share).",
                )
            )
        if (floor := below_chance_floor(members)) is not None:
            acc, chance = floor
            severity = "fatal" if acc < chance / 2 else "warning"
            found.append(
                (
                    severity,
                    f"{task}: accuracy {100 * acc:.1f}% is below the random-guess floor {100 * chance:.1f}% beyond a "
                    f"{100 * FLOOR_CONFIDENCE:.1f}% interval; check the answer key and the scoring.",
                )
            )
    return found


def check_predictions(rows: Sequence[dict[str, Any]], mode: str, label: str) -> list[str]:
    """Run every check on one model's predictions; raise (error, fatal findings), log loudly, or skip (off)."""
    if mode == "off":
        return []
    found = problems(rows, collapse_fatal=label == "base")
    if not found:
        return []
    fatal = [text for severity, text in found if severity == "fatal"]
    message = f"evaluation sanity check for '{label}':\n  - " + "\n  - ".join(text for _, text in found)
    if mode == "error" and fatal:  # one line: the entry points print it as the run's error
        raise EvalSanityError(
            f"evaluation sanity check for '{label}': {' '.join(fatal)} Set eval.sanity=warn to record the numbers "
            "anyway (a model.init=random base often predicts one letter)."
        )
    log.error("!" * 80 + "\n%s\n" + "!" * 80, message)
    return [text for _, text in found]
