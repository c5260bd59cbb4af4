"""`python -m medtune.data`: prepare the data sources; the arguments and the call are in medtune/data/cli.py."""

from medtune.data.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
