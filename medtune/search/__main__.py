"""`python -m medtune.search`: the ratio search; the arguments and the call are in medtune/search/cli.py."""

from medtune.search.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
