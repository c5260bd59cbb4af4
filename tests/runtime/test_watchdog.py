"""The watchdog ends a stalled rank with a record naming the phase and step, and records a SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from medtune.runtime.watchdog import TIMEOUT_EXIT_CODE, Watchdog, process_group_timeout


class _Recorder:
    def __init__(self) -> None:
        self.failures: list[tuple[str, str, int | None]] = []
        self.codes: list[int] = []
        self.done = threading.Event()

    def on_failure(self, message: str, phase: str, step: int | None) -> None:
        self.failures.append((message, phase, step))

    def exit(self, code: int) -> None:
        self.codes.append(code)
        self.done.set()


@contextlib.contextmanager
def _loop_in_step(rec: _Recorder, step: int) -> Iterator[Watchdog]:
    """A one-process watchdog (signals wait for the loop) inside the training loop at `step`, stopped after."""
    watch = Watchdog(60, rec.on_failure, exit=rec.exit).start(timer=False, graceful=True)
    try:
        watch.enter("train", step=step)
        watch.polling = True
        yield watch
    finally:
        watch.stop()


def test_stall_fires_with_phase_and_step() -> None:
    rec = _Recorder()
    watch = Watchdog(0.3, rec.on_failure, exit=rec.exit).start(catch_sigterm=False)
    try:
        watch.enter("train", step=4)
        watch.tick(step=5)
        assert rec.done.wait(10), "the watchdog did not fire"
    finally:
        watch.stop()
    ((message, phase, step),) = rec.failures
    assert (phase, step) == ("train", 5) and rec.codes == [TIMEOUT_EXIT_CODE]
    assert "phase train at step 5" in message and "sharding.timeout_min" in message


def test_progress_and_pause_keep_it_quiet() -> None:
    rec = _Recorder()
    watch = Watchdog(0.5, rec.on_failure, exit=rec.exit).start(catch_sigterm=False)
    try:
        watch.enter("eval")
        for _ in range(10):  # 1 s of work, a tick every 0.1 s
            time.sleep(0.1)
            watch.tick()
        watch.pause("load model")  # long, but no collective: not timed
        time.sleep(1.0)
    finally:
        watch.stop()
    assert rec.failures == [] and rec.codes == []


def test_sigterm_is_recorded_even_while_the_main_thread_waits() -> None:
    rec = _Recorder()
    before = signal.getsignal(signal.SIGTERM)
    watch = Watchdog(60, rec.on_failure, exit=rec.exit).start()
    try:
        watch.enter("checkpoint", step=7)
        os.kill(os.getpid(), signal.SIGTERM)
        assert rec.done.wait(10), "SIGTERM was not seen"
    finally:
        watch.stop()
    assert signal.getsignal(signal.SIGTERM) == before  # stop() restored it
    ((message, phase, step),) = rec.failures
    assert "SIGTERM" in message and (phase, step) == ("checkpoint", 7)
    assert rec.codes == [128 + signal.SIGTERM]


def test_process_group_timeout_is_later_than_the_watchdog() -> None:
    for minutes in (0.1, 1, 10, 120):
        assert process_group_timeout(minutes * 60).total_seconds() > minutes * 60 + 59


@pytest.mark.parametrize("bad", [0, -1])
def test_timeout_must_be_positive(bad: float) -> None:
    from medtune.config import ConfigError, ShardingConfig

    with pytest.raises(ConfigError, match=r"sharding\.timeout_min"):
        ShardingConfig(timeout_min=bad)


def test_one_process_stops_its_loop_at_the_step_end_on_sigterm() -> None:
    """Issue 32.7: in one process the signal waits for the loop (which checkpoints and records), it does not kill."""
    rec = _Recorder()
    with _loop_in_step(rec, 3) as watch:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while watch.stop_signal is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.stop_signal == signal.SIGTERM
        stopped = watch.terminated(3, saved=True)
    assert rec.failures == [] and rec.codes == []  # the loop ended in time: nothing forced
    assert stopped.exit_code == 143 and "checkpoint step_000003 saved" in str(stopped)


@pytest.mark.parametrize("second_signal", [True, False])
def test_a_loop_that_does_not_stop_in_time_or_a_second_signal_ends_it_at_once(
    second_signal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medtune.runtime import watchdog

    monkeypatch.setattr(watchdog, "STOP_GRACE_S", 60.0 if second_signal else 0.3)
    rec = _Recorder()
    with _loop_in_step(rec, 5) as watch:
        os.kill(os.getpid(), signal.SIGINT)
        if second_signal:
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGINT)
        assert rec.done.wait(10), "the run was not ended"
    ((message, phase, step),) = rec.failures
    assert (phase, step) == ("train", 5)
    assert "terminated by SIGINT in phase train at step 5" in message and watch.signalled == signal.SIGINT
    assert rec.codes == [128 + signal.SIGINT]


def test_outside_the_loop_a_signal_is_recorded_at_once() -> None:
    rec = _Recorder()
    before = signal.getsignal(signal.SIGINT)
    watch = Watchdog(60, rec.on_failure, exit=rec.exit).start(timer=False, graceful=True)
    try:
        watch.enter("eval", step=8)
        os.kill(os.getpid(), signal.SIGTERM)
        assert rec.done.wait(10)
    finally:
        watch.stop()
    assert rec.failures[0][1:] == ("eval", 8) and rec.codes == [143]
    assert signal.getsignal(signal.SIGINT) == before
