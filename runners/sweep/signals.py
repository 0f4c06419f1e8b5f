"""Stopping a sweep on SIGINT (Ctrl-C) or SIGTERM: the whole sweep, promptly, resumably.

While a sweep runs, `stop_on_signals` holds both signals. The first one ends Tune's experiment
the way Tune's own Ctrl-C does (Tune's SIGUSR1 handler: the run loop stops, the running trials
are stopped, the experiment state is saved one last time), and is remembered, so that the
sweep then records itself as interrupted rather than finished (`runners.sweep.run.run_sweep`) and
the command exits 130 (SIGINT) or 143 (SIGTERM). A signal before the experiment has started
stops the sweep at once with `SweepInterrupted`. A second signal exits at once: every store
commits whole transactions, and a killed sweep is resumable as a hard kill is.

Tune's own SIGINT handler is turned off (TUNE_DISABLE_SIGINT_HANDLER), so that SIGINT and
SIGTERM take the same path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psutil

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
TUNE_ENV = {"TUNE_DISABLE_SIGINT_HANDLER": "1"}


class SweepInterrupted(Exception):
    """The sweep stopped on a signal; it is resumable. `exit_code` is 128 + the signal."""

    def __init__(self, signum: int, sweep_id: str | None = None) -> None:
        self.signum = signum
        self.sweep_id = sweep_id
        name = signal.Signals(signum).name
        where = f"sweep {sweep_id}" if sweep_id else "the sweep"
        resume = f"; continue it with --resume --sweep-id {sweep_id}" if sweep_id else ""
        super().__init__(f"{where} was interrupted by {name}{resume}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.signum, self.sweep_id))


class Stop:
    """The signal that stopped the sweep, if one did."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


def kill_own_ray() -> None:
    """Kill the Ray processes this process started (a local cluster), which an exit without
    Ray's shutdown would leave behind; a joined cluster's are not this process's to kill.
    Ray's public API has no shutdown quick enough for a second Ctrl-C.

    Ray's own `kill_all_processes` kills the processes it started itself; the raylet's
    children (its agents, the workers) are left to notice that the raylet is gone, which
    took over 30 s here. They are this process's descendants, and are killed with it."""
    try:
        from ray._private import worker

        node = worker._global_node
        if node is None or not node.all_processes:
            return  # a joined cluster: nothing here is this process's own
        below = _descendants(os.getpid())
        node.kill_all_processes(check_alive=False, allow_graceful=False)
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    except Exception:  # exiting anyway: what cannot be killed is left to Ray's reaper
        pass


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (psutil); none where it cannot be read."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """Hold SIGINT and SIGTERM for the time a sweep runs (see the module's docstring)."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach the main thread alone; its owner handles them
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop:
            sys.stderr.write("error: stopped at once on a second signal\n")
            sys.stderr.flush()
            kill_own_ray()
            os._exit(128 + stop.signum)  # type: ignore[operator]
        stop.signum = signum
        name = signal.Signals(signum).name
        usr1 = signal.getsignal(signal.SIGUSR1)
        if callable(usr1):
            log.warning("%s: stopping the sweep (again to stop at once)", name)
            sys.stderr.write(f"{name}: stopping the sweep; send it again to stop at once\n")
            sys.stderr.flush()
            usr1(signal.SIGUSR1, None)  # Tune's handler: end the run loop, save its state
            return
        raise SweepInterrupted(signum)  # no experiment running yet: nothing to save

    saved = {s: signal.signal(s, handler) for s in SIGNALS}
    saved_usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        yield stop
    finally:
        for s, old in saved.items():
            signal.signal(s, old)
        with contextlib.suppress(TypeError, ValueError):
            signal.signal(signal.SIGUSR1, saved_usr1 if saved_usr1 is not None else signal.SIG_DFL)


__all__ = ["SIGNALS", "TUNE_ENV", "Stop", "SweepInterrupted", "kill_own_ray", "stop_on_signals"]
