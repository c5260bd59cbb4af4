"""The arguments of `python -m medtune.bench` (medtune/bench/run.py measures; see its docstring for the plan format).

python -m medtune.bench --steps 20 --warmup 3 --out experiments/results/efficiency
python -m medtune.bench --config experiments/efficiency/fast_defaults.yaml --peers unsloth,trl_liger
"""

from __future__ import annotations

import argparse
import logging
import sys

from medtune.bench.lengths import LENGTHS_JSON, REPO
from medtune.bench.peers import PEERS
from medtune.bench.run import CONFIGS_YAML, run_bench
from medtune.config import OPTION_HELP, ConfigError, use_config_dir


def main(argv: list[str] | None = None) -> int:
    """CLI: options first, then Hydra overrides applied to every configuration."""
    parser = argparse.ArgumentParser(prog="python -m medtune.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(CONFIGS_YAML), help="YAML plan of configurations")
    parser.add_argument("--config-dir", help=OPTION_HELP)
    parser.add_argument("--lengths", default=str(LENGTHS_JSON), help="length histogram (medtune/bench/lengths.py)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, kernels, compile)")
    parser.add_argument("--out", default=str(REPO / "experiments" / "results" / "efficiency"))
    parser.add_argument("--profile", action="store_true", help="profile the fastest configuration")
    parser.add_argument("--peers", default="", help=f"also run peers on the same samples: {','.join(PEERS)}")
    parser.add_argument("--peer-config", default=None, help="the configuration the peers mirror (default: baseline)")
    parser.add_argument("--peer-env", action="append", default=[], metavar="PEER=SITE_DIR",
                        help="run a peer with its own site-packages (e.g. unsloth=/opt/unsloth-site)")  # fmt: skip
    parser.add_argument("--peer-timeout-s", type=float, default=1800,
                        help="a peer's whole run, or an isolated configuration's, compile included")  # fmt: skip
    parser.add_argument("--isolate", choices=["auto", "always", "never"], default="auto",
                        help="one process per configuration (auto: if some patch kernels, 1 GPU)")  # fmt: skip
    args, extra = parser.parse_known_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    unknown = [p for p in args.peers.split(",") if p.strip() and p.strip() not in PEERS]
    if unknown:
        parser.error(f"--peers: unknown {unknown}; known: {', '.join(PEERS)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        use_config_dir(args.config_dir)  # exported: a configuration measured in its own process reads the same folder
        run_bench(args, extra)
    except ConfigError as err:  # a config folder or choice that is not there, a bad value: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
