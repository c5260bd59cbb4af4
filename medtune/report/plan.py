"""Before a run: how many questions (and seeds) an effect needs, `python -m medtune.report --plan ...`.

    python -m medtune.report --plan --effect-pp 1.23 --discordance 0.1 --questions 239
    python -m medtune.report --plan --effect-pp 1.23 --accuracy 0.2 --seeds 3 --seed-sd-pp 0.7

The paired part plans the adapter - base contrast (exact McNemar, medtune.eval.power); the seed part plans the
ratio - reference contrast (Welch over seeds). Without --discordance the paired part assumes the two models err
independently at --accuracy, discordance 2 p (1 - p): a fine-tuned model usually agrees with its base more often,
so this overstates the questions needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medtune.eval.power import (
    connor_sample_size,
    mcnemar_mde,
    mcnemar_power,
    mcnemar_sample_size,
    welch_mde,
    welch_power,
    welch_seeds,
)
from medtune.eval.stats import format_level


@dataclass(frozen=True)
class Plan:
    """What `--plan` was asked: effect and spreads in percentage points, shares in [0, 1]."""

    effect_pp: float
    confidence: float = 0.95
    power: float = 0.8
    discordance: float | None = None
    accuracy: float | None = None
    questions: int | None = None
    seeds: int | None = None
    seed_sd_pp: float | None = None

    def paired_discordance(self) -> tuple[float, str]:
        """The discordance the paired part plans with, and where it came from; ValueError when neither is given."""
        if self.discordance is not None:
            return self.discordance, "given"
        if self.accuracy is None:
            raise ValueError(
                "--plan needs --discordance (share of questions the fine-tuned model and its base answer "
                "differently, e.g. 0.1; the report's 'discordant %' column) or --accuracy (e.g. 0.5)"
            )
        return 2 * self.accuracy * (1 - self.accuracy), f"independent errors at accuracy {self.accuracy:g}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def paired_lines(plan: Plan) -> list[str]:
    """The adapter - base part of the plan."""
    psi, where = plan.paired_discordance()
    effect = plan.effect_pp / 100.0
    if not 0.0 < effect <= psi <= 1.0:
        raise ValueError(
            f"--effect-pp {plan.effect_pp:g} must be > 0 and at most the discordance ({100 * psi:g} pp): an effect "
            "needs questions that the two models answer differently"
        )
    n = mcnemar_sample_size(effect, psi, plan.confidence, plan.power)
    connor = math.ceil(connor_sample_size(effect, psi, plan.confidence, plan.power))
    lines = [
        f"adapter - base (paired, exact McNemar), discordance {_pct(psi)} ({where}):",
        f"  questions needed: {n} (Connor 1987 normal approximation: {connor})",
    ]
    if plan.questions is not None:
        power = mcnemar_power(plan.questions, psi, effect, plan.confidence)
        mde = mcnemar_mde(plan.questions, psi, plan.confidence, plan.power)
        shown = "none (not even with every discordant question one way)" if math.isinf(mde) else f"{100 * mde:.2f} pp"
        lines.append(f"  at {plan.questions} questions: power {_pct(power)}; minimum detectable effect {shown}")
    return lines


def seed_lines(plan: Plan) -> list[str]:
    """The ratio - reference part of the plan (needs the sd of a ratio's metric across seeds)."""
    if plan.seed_sd_pp is None:
        return ["ratio - reference (Welch over seeds): add --seed-sd-pp (sd of one ratio's accuracy across seeds)"]
    sd, effect = plan.seed_sd_pp, plan.effect_pp
    lines = [
        f"ratio - reference (Welch over seeds), sd across seeds {sd:g} pp:",
        f"  seeds per ratio needed: {welch_seeds(effect, sd, plan.confidence, plan.power)}",
    ]
    if plan.seeds is not None:
        power = welch_power(effect, sd, plan.seeds, plan.seeds, plan.confidence)
        mde = welch_mde(sd, plan.seeds, plan.seeds, plan.confidence, plan.power)
        shown = "n/a (under two seeds)" if math.isnan(mde) else f"{mde:.2f} pp"
        lines.append(f"  at {plan.seeds} seeds a side: power {_pct(power)}; minimum detectable effect {shown}")
    return lines


def plan_text(plan: Plan) -> str:
    """The whole plan as printed by --plan; ValueError for a plan that cannot be made (says which option)."""
    head = (
        f"Effect {plan.effect_pp:g} pp at {format_level(plan.confidence)} confidence (two-sided) and "
        f"{format_level(plan.power)} power (the minimum detectable effect is the one found with that power):"
    )
    return "\n".join([head, *paired_lines(plan), *seed_lines(plan)])
