"""The report's command line: `python -m medtune.report SWEEP_DIR [--out OUT] [--reference EN:KO] [--wandb]`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from medtune.report.wandb import publish_wandb
from medtune.report.write import write


def _level(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a level in (0, 1), e.g. 0.9 for 90% intervals")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: python -m medtune.report DIR [--out OUT] [--reference EN:KO] [--wandb]."""
    parser = argparse.ArgumentParser(
        prog="python -m medtune.report", description="Report over a sweep's run directories (no W&B needed)."
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory, e.g. runs/multirun/<date>/<time>")
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
    args = parser.parse_args(argv)
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
