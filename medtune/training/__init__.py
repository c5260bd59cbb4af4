"""Training: the recipe and its loop, batches, the chunked loss, distributed setup, checkpoints, tracking, resume,
the eval stage, the watchdog, and the checks a run makes before anything loads (`preflight`).

`python -m medtune.train` (medtune/train.py) runs `medtune.training.run.run`.
"""
