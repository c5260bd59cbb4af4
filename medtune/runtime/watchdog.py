"""Where a rank is (phase, step), and a watchdog that ends a stuck or stopped run with a record instead of a hang.

Under torchrun every rank must enter the same collectives in the same order; a rank that is gone, or that took
another branch, leaves the others waiting forever inside a collective, where no Python exception can reach them.
`Watchdog` runs beside the loop on every rank:

    watch = Watchdog(timeout_s=600, on_failure=write_failed_summary)
    watch.start()
    watch.enter("train", step=0)     # a named phase; the clock restarts
    watch.tick(step=12)              # progress inside the phase (each micro-batch, each scoring forward)
    watch.stop()

- No progress for `timeout_s` while armed (after `enter`): `on_failure(message, phase, step)` is called with a
  message naming the phase and the step, then the process exits with code 3. Every rank stuck in the same
  collective fires; rank 0 writes the run's failed summary.json.
- SIGTERM (torchrun sends it to every rank when one exits with an error, as do schedulers) is seen by a thread
  through `signal.set_wakeup_fd`, so it is recorded even while the main thread is blocked inside a collective;
  the process then exits with 128 + 15.
- One process (`start(graceful=True)`, no timer: nothing to wait for) catches SIGTERM and SIGINT. While the
  training loop polls (`polling`), the signal only sets `stop_signal`: the loop ends after the step in progress,
  saves a checkpoint and raises `RunTerminated`; if that takes longer than STOP_GRACE_S, or in any other phase, or
  at a second signal, the thread records the run as terminated and exits with 128 + the signal at once.

The process-group timeout is set a little longer than `timeout_s` (`process_group_timeout`), so the watchdog,
which can write the record, fires before the backend tears the process down (NCCL aborts without a Python hook).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger("medtune.runtime.watchdog")
TIMEOUT_EXIT_CODE = 3
# Slurm's KillWait and Kubernetes' terminationGracePeriodSeconds both default to 30 s before SIGKILL: a step that has
# not ended 20 s after the signal is given up, and the record is written while there is still time.
STOP_GRACE_S = 20.0


class RunTerminated(Exception):
    """The run stopped on a signal (SIGTERM from a scheduler, SIGINT from Ctrl-C) at a step boundary."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def process_group_timeout(timeout_s: float) -> dt.timedelta:
    """The backend's own timeout: later than the watchdog's, so that the watchdog reports first."""
    return dt.timedelta(seconds=timeout_s + max(60.0, 0.5 * timeout_s))


class Watchdog:
    """Phase and step of this rank; ends the process with a record when it stalls or is told to stop."""

    def __init__(
        self,
        timeout_s: float = float("inf"),
        on_failure: Callable[[str, str, int | None], None] | None = None,
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.timeout_s = timeout_s
        self.on_failure = on_failure
        self._exit = exit
        self.phase = "setup"
        self.step: int | None = None
        self._armed = False
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._fired = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wakeup: tuple[int, int] | None = None
        self._old_handlers: dict[int, object] = {}
        self._graceful = False
        self.polling = False  # the training loop checks stop_signal after every step
        self.stop_signal: int | None = None  # a signal the loop is asked to stop for
        self.signalled: int | None = None  # the signal that ended the run (the record says "terminated")

    # --------------------------------------------------------------------------------------------- main thread
    def start(self, catch_sigterm: bool = True, timer: bool = True, graceful: bool = False) -> Watchdog:
        """Start the timer thread and (from the main thread) the signal thread; `graceful`: one process, where
        SIGTERM and SIGINT stop the training loop at the end of its step (see the module's docstring)."""
        if timer:
            self._threads.append(threading.Thread(target=self._watch_time, name="medtune-watchdog", daemon=True))
        if catch_sigterm and threading.current_thread() is threading.main_thread():
            self._graceful = graceful
            read_fd, write_fd = os.pipe()
            os.set_blocking(write_fd, False)
            self._wakeup = (read_fd, write_fd)
            for signum in (signal.SIGTERM, signal.SIGINT) if graceful else (signal.SIGTERM,):
                self._old_handlers[signum] = signal.signal(signum, lambda *_: None)  # the thread below acts on it
            signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
            self._threads.append(threading.Thread(target=self._watch_signals, name="medtune-sigterm", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def enter(self, phase: str, step: int | None = None) -> None:
        """Begin a phase (arms the timer); collectives inside it must each finish within the timeout."""
        with self._lock:
            self.phase, self.step, self._armed, self._last = phase, step, True, time.monotonic()

    def tick(self, step: int | None = None) -> None:
        """Progress inside the current phase."""
        with self._lock:
            if step is not None:
                self.step = step
            self._last = time.monotonic()

    def pause(self, phase: str) -> None:
        """A phase without collectives that may take long (loading a model): the timer does not run."""
        with self._lock:
            self.phase, self._armed = phase, False

    @property
    def fired(self) -> bool:
        """True once the watchdog has begun ending the process."""
        return self._fired.is_set()

    def terminated(self, step: int, saved: bool) -> RunTerminated:
        """The exception that ends the training loop after `step` for `stop_signal` (the record names the step)."""
        assert self.stop_signal is not None
        self.phase, self.step = "train", step
        then = (
            f"checkpoint step_{step:06d} saved; continue with trainer.resume=auto and the same hydra.run.dir"
            if saved
            else "no checkpoint (trainer.save_every=0)"
        )
        name = signal.Signals(self.stop_signal).name
        return RunTerminated(f"terminated by {name} after step {step} (the step completed): {then}.", self.stop_signal)

    def where(self) -> str:
        """'phase train at step 12' (or without the step)."""
        return f"phase {self.phase}" + (f" at step {self.step}" if self.step is not None else "")

    def stop(self) -> None:
        """Stop watching (the run ended on its own); restores the SIGTERM handler."""
        self._stopped.set()
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
            os.write(self._wakeup[1], b"\0")  # wakes the signal thread, which then sees _stopped
        for thread in self._threads:
            thread.join(timeout=5)
        if self._wakeup is not None:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    # --------------------------------------------------------------------------------------------- threads
    def _fail(self, message: str, code: int) -> None:
        if self._fired.is_set() or self._stopped.is_set():
            return
        self._fired.set()
        log.error("%s", message)
        try:
            if self.on_failure is not None:
                self.on_failure(message, self.phase, self.step)
        except Exception as err:  # the record is best effort; exiting is not
            log.error("could not record the failure: %s: %s", type(err).__name__, err)
        logging.shutdown()
        self._exit(code)

    def _watch_time(self) -> None:
        poll_s = min(5.0, max(0.05, self.timeout_s / 10))
        while not self._stopped.wait(poll_s):
            with self._lock:
                idle_s = time.monotonic() - self._last if self._armed else 0.0
            if idle_s > self.timeout_s:
                self._fail(
                    f"no progress for {idle_s:.0f} s in {self.where()} (limit {self.timeout_s:.0f} s, "
                    "sharding.timeout_min): a collective is waiting for a rank that stopped or took another path; "
                    "every rank stops. Raise sharding.timeout_min if a single step or checkpoint legitimately takes "
                    "this long.",
                    TIMEOUT_EXIT_CODE,
                )
                return

    def _watch_signals(self) -> None:
        assert self._wakeup is not None
        deadline: float | None = None  # set once the loop has been asked to stop
        while not self._stopped.is_set():
            wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ready, _, _ = select.select([self._wakeup[0]], [], [], wait_s)
                data = os.read(self._wakeup[0], 64) if ready else b""
            except OSError:
                return
            if self._stopped.is_set():
                return
            if not ready:  # the step in progress did not end within STOP_GRACE_S
                self._terminate(self.stop_signal or signal.SIGTERM)
                return
            signum = next((s for s in (signal.SIGTERM, signal.SIGINT) if s in data), None)
            if signum is None:
                continue
            if self._graceful and self.polling and self.stop_signal is None:
                self.stop_signal, deadline = signum, time.monotonic() + STOP_GRACE_S
                log.warning("%s: the run stops after the step in progress", signal.Signals(signum).name)
                continue
            self._terminate(signum)  # another phase, or a second signal: now
            return

    def _terminate(self, signum: int) -> None:
        self.signalled = signum
        why = (
            "the job was cancelled or preempted (a scheduler, or Ctrl-C)"
            if self._graceful
            else "torchrun stops every rank when one exits with an error (see that rank's log), or the job was "
            "cancelled"
        )
        self._fail(f"terminated by {signal.Signals(signum).name} in {self.where()}: {why}.", 128 + signum)
