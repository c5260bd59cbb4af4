"""`python -m medtune.report SWEEP_DIR [...]`: report.md, tables and plots from the run directories alone."""

from medtune.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
