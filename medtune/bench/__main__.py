"""`python -m medtune.bench [--config PLAN] [--config-dir DIR] [--peers ...] [overrides]`: the efficiency benchmark."""

import sys

from medtune.bench.run import main
from medtune.config import ConfigError

if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:  # a config folder or choice that is not there, a bad value: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
