"""`python -m medtune.memory`: per-rank peak memory of a config: arguments and call in memory/cli.py."""

from medtune.memory.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
