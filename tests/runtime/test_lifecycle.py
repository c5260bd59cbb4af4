"""A command's life: the run stamp every rank shares, errors as one line and an exit code, a session that leaves
no process group or signal handler behind."""

from __future__ import annotations

import logging
import signal

import pytest

from medtune.config import ConfigError, ShardingConfig
from medtune.eval.adapter_check import AdapterFileError
from medtune.runtime import lifecycle
from medtune.runtime.launch import set_run_stamp
from medtune.runtime.watchdog import RunTerminated

log = logging.getLogger("medtune.test")


def test_the_run_stamp_names_one_directory_per_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    train: dict[str, str] = {}
    set_run_stamp(train, runs=True)
    assert train["MEDTUNE_RUN_STAMP"].count("/") == 1  # <date>/<time>, as Hydra's own outputs
    evaluate: dict[str, str] = {}
    set_run_stamp(evaluate, runs=True, suffix="_eval")
    assert "/" not in evaluate["MEDTUNE_RUN_STAMP"] and evaluate["MEDTUNE_RUN_STAMP"].endswith("_eval")
    helped: dict[str, str] = {}
    set_run_stamp(helped, runs=False)  # --help: no rank to wait for
    assert helped == {"MEDTUNE_RUN_STAMP": "now"}
    chosen = {"MEDTUNE_RUN_STAMP": "mine"}
    set_run_stamp(chosen, runs=True, suffix="_eval")
    assert chosen == {"MEDTUNE_RUN_STAMP": "mine"}


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (ConfigError("trainer.lr: must be > 0"), 2, "invalid config: trainer.lr: must be > 0"),
        (AdapterFileError("adapter_model.safetensors: torn"), 2, "adapter_model.safetensors: torn"),
        (RuntimeError("adapter inactive"), 1, "adapter inactive"),
        (RunTerminated("terminated by SIGTERM", signal.SIGTERM), 128 + signal.SIGTERM, None),
        (KeyError("logged by the run"), 1, None),
    ],
)
def test_errors_become_one_line_and_an_exit_code(
    error: BaseException, code: int, line: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    kinds = {"bad_input": (AdapterFileError,), "failed": (RuntimeError,), "logged": (KeyError,)}
    guarded = lifecycle.exits_on_failure(log, **kinds)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="medtune.test"), pytest.raises(SystemExit) as exited, guarded:
        raise error
    assert exited.value.code == code
    assert [r.getMessage() for r in caplog.records] == ([line] if line else [])


def test_other_errors_keep_their_traceback() -> None:
    # logged=OSError covers only full or unwritable disks
    with pytest.raises(OSError, match="not a disk error"), lifecycle.exits_on_failure(log, logged=(OSError,)):
        raise OSError("not a disk error")
    with pytest.raises(ZeroDivisionError), lifecycle.exits_on_failure(log):
        raise ZeroDivisionError


def test_a_session_restores_the_signal_handlers_even_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError, match="inside"), lifecycle.session(ShardingConfig(), "cpu") as (dist, watchdog):
        assert (dist.rank, dist.world_size, dist.device.type) == (0, 1, "cpu")
        watchdog.start(timer=False)
        assert signal.getsignal(signal.SIGTERM) is not before
        raise ValueError("inside")
    assert signal.getsignal(signal.SIGTERM) is before
