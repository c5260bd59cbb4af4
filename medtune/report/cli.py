"""The report's command line: `python -m medtune.report SWEEP_DIR [--out OUT] [--reference EN:KO] [--wandb]`, and
before a run `python -m medtune.report --plan --effect-pp 1.23 --discordance 0.1 [--questions N] [--seeds S ...]`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from medtune.report.plan import Plan, plan_text
from medtune.report.wandb import publish_wandb
from medtune.report.write import write


def _level(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a level in (0, 1), e.g. 0.9 for 90% intervals")
    return value


def _add_plan_options(parser: argparse.ArgumentParser) -> None:
    """--plan and the numbers it plans with (README, section 'Tracking, sweeps and reports')."""
    group = parser.add_argument_group("--plan: questions and seeds an effect needs (no sweep directory)")
    group.add_argument("--plan", action="store_true", help="print the questions and seeds --effect-pp needs")
    group.add_argument("--effect-pp", type=float, help="the effect to detect, percentage points of accuracy")
    group.add_argument("--discordance", type=_level, help="share of questions adapter and base answer differently")
    group.add_argument("--accuracy", type=_level, help="without --discordance: assume independent errors at this")
    group.add_argument("--questions", type=int, help="also: power and minimum detectable effect at this many")
    group.add_argument("--seeds", type=int, help="also: power and minimum detectable effect at this many a side")
    group.add_argument("--seed-sd-pp", type=float, help="sd of one ratio's accuracy across seeds, pp")
    group.add_argument("--power", type=_level, default=0.8, help="the power to plan for (default 0.8)")


def _plan(args: argparse.Namespace) -> int:
    if args.effect_pp is None:
        print("error: --plan needs --effect-pp (the effect to detect, in percentage points, e.g. 1.23)")
        return 2
    keys = ("effect_pp", "confidence", "power", "discordance", "accuracy", "questions", "seeds", "seed_sd_pp")
    try:
        print(plan_text(Plan(**{k: getattr(args, k) for k in keys})))
    except ValueError as err:
        print(f"error: {err}")
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: python -m medtune.report DIR [--out OUT] [--reference EN:KO] [--wandb]."""
    parser = argparse.ArgumentParser(
        prog="python -m medtune.report", description="Report over a sweep's run directories (no W&B needed)."
    )
    parser.add_argument("sweep_dir", type=Path, nargs="?", help="the sweep directory, e.g. runs/multirun/<date>/<time>")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <sweep_dir>/report)")
    parser.add_argument(
        "--confidence",
        type=_level,
        default=0.95,
        help="level of every interval and test (default 0.95); runs evaluated at another level are recomputed from "
        "their stored predictions, or the report stops",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="EN:KO",
        help="also contrast every ratio with this one (e.g. 1:1): difference of seed means, Welch interval",
    )
    parser.add_argument("--wandb", action="store_true", help="also log plots and tables to W&B when online")
    _add_plan_options(parser)
    args = parser.parse_args(argv)
    if args.plan:
        return _plan(args)
    if args.sweep_dir is None:
        parser.error("give the sweep directory (or --plan)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out_dir = args.out or args.sweep_dir / "report"
    try:
        rep = write(args.sweep_dir, out_dir, args.confidence, args.reference)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 2
    failed = rep.runs[rep.runs["status"] != "ok"]
    print(f"{len(rep.runs)} runs ({len(failed)} failed) -> {out_dir / 'report.md'}")
    for _, r in failed.iterrows():
        print(f"  FAILED {r['run']}: {r.get('run/error', '')}")
    if args.wandb:
        publish_wandb(rep, args.sweep_dir, out_dir)
    return 0
