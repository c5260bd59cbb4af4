"""The efficiency benchmark: `python -m medtune.bench` (see medtune/bench/run.py)."""
