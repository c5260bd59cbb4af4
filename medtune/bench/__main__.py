"""`python -m medtune.bench [--config PLAN] [--peers ...] [overrides]`: the efficiency benchmark."""

from medtune.bench.run import main

if __name__ == "__main__":
    main()
