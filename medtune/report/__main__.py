"""`python -m medtune.report SWEEP_DIR [...]`: report.md, tables and plots from the run directories alone."""

import sys

from medtune.report.sweep import main

if __name__ == "__main__":
    sys.exit(main())
