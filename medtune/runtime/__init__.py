"""The runtime every command shares: where this process sits in a launch and its process group (`launch.py`,
`process_group.py`), the hang watchdog and its signals (`watchdog.py`), the checks before anything loads
(`preflight.py`), the run directory's record (`run_record.py`), tracking (`tracking.py`, `wandb_run.py`), sweep
jobs (`sweep.py`), and a command's life around them: run stamp, session, errors as one line (`lifecycle.py`); the
model sharded with FSDP2 and its scoring view (`shards.py`), memory per phase (`peak_memory.py`), and the model the
evaluation command scores (`eval_model.py`).

It sits under training/ and the commands (`medtune.train`, `medtune.evaluate`, the bench); it imports config,
files, data, models and eval, never training.
"""
