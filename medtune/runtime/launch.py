"""Where this process sits in a torchrun launch, read from the environment (no torch import for one process).

rank, world_size, local_rank = env_world()
set_run_stamp(os.environ, runs=True)                    # the same run directory on every rank
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import MutableMapping


def env_world() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them; (0, 1, 0) for a plain `python -m`."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def launched_by_torchrun() -> bool:
    """True under torchrun (or any launcher that sets the torch.distributed environment)."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def shared_run_stamp() -> str:
    """A timestamp for the run directory, chosen by rank 0 and shared so every rank writes to the same place.

    It is needed before the config is composed, so it travels through torchrun's key-value store, not a process
    group: the run's group (sharding.backend, sharding.timeout_min) is created afterwards. A worker that torchrun
    restarts (--max-restarts) finds the same stamp, hence the same run directory to resume in. One process imports
    no torch here, so a bad config is reported in about a second.
    """
    stamp = dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    rank, world, _ = env_world()
    if world == 1:
        return stamp
    import torch.distributed as tdist

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # launched by hand: a group with the defaults
        if not tdist.is_initialized():
            tdist.init_process_group(backend="gloo", timeout=dt.timedelta(minutes=30))
        box = [stamp]
        tdist.broadcast_object_list(box, src=0)
        return box[0]
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = tdist.TCPStore(host, port, world_size=world, is_master=False, timeout=dt.timedelta(minutes=10))
    key = f"medtune/run_stamp/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
    if rank == 0 and not store.check([key]):
        store.set(key, stamp)
    return store.get(key).decode()


def set_run_stamp(environ: MutableMapping[str, str], runs: bool, suffix: str = "") -> None:
    """Set $MEDTUNE_RUN_STAMP, which names the run directory (conf/train.yaml), unless it is set already.

    A command that runs gets rank 0's timestamp, shared with every rank (`shared_run_stamp`); with a `suffix`
    (evaluate: "_eval") it is one folder, `2026-12-07_10-00-00_eval`, not a date folder and a time folder. A
    command that only prints (--help, --cfg: `runs=False`) waits for no rank and gets a placeholder.
    """
    if "MEDTUNE_RUN_STAMP" not in environ and runs:
        stamp = shared_run_stamp()
        environ["MEDTUNE_RUN_STAMP"] = stamp.replace("/", "_") + suffix if suffix else stamp
    if suffix:
        environ.setdefault("MEDTUNE_RUN_STAMP", dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S") + suffix)
    environ.setdefault("MEDTUNE_RUN_STAMP", "now")
