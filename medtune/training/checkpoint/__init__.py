"""Checkpoints and resume: one save/load interface (`base.py`: `Checkpointer`, whose `save` every implementation
shares) with a local implementation (one process or DDP: rank 0 writes, `local.py`) and a sharded one (FSDP2: every
rank writes its shard, `sharded.py`), chosen in `store.py`; their shared writing and RNG handling (`common.py`), where
checkpoints lie (`layout.py`), and every resume rule (`resume.py`).

Nothing is imported here, so `resume` and `layout` load without torch (the command checks the resume target first).
"""
