"""`python -m medtune.bench`: the speed benchmark; the arguments and the call are in medtune/bench/cli.py."""

from medtune.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
