"""The memory estimator, torch-free: `python -m medtune.memory <overrides> world_size=N` (see estimate.py)."""
