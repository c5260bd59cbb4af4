"""`python -m medtune.export`: merge and export a run's adapter: arguments and call in export/cli.py."""

from medtune.export.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
