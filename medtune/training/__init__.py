"""Training: the recipe and its loop, batches, the chunked loss, the loss module over several processes (DDP, FSDP2),
checkpoints and every resume rule (`checkpoint/`), the eval stage and the forgetting watch (`watch.py`). What every
command shares (process group, watchdog, preflight, the run's record, tracking, sweeps, FSDP2 sharding and the
scoring view) is in medtune.runtime.

`python -m medtune.train` (medtune/train.py) runs `medtune.training.run.run`.
"""
