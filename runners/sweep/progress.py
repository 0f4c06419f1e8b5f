"""The progress of a sweep: trials waiting, running, done and failed per strategy and the best
objective so far, counted by a Tune callback and shown by whoever listens (the CLI's live table).

A trial waits from the moment Tune creates it until its worker runs it: for its worker to start,
for its turn while the sweep's trials fill the cluster, or for resources that other work holds.
Trials that have waited `WAIT_NOTED_S` for the last of these are noted: `Progress.wait` says
what a trial asks and what is free, and one event says so.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray import tune

from runners.sweep.tracking import trial_error
from runners.sweep.worker import confirms, split_config

WAIT_NOTED_S = 10.0  # a worker's start takes seconds: a shorter wait is not for resources
FREE_CHECKED_S = 2.0  # how often a long wait asks the cluster what is free


@dataclass
class StrategyProgress:
    """One strategy's trials: `trials` to search (`done`, `failed`, `best` count those alone)
    and up to `confirm` confirmation trials (`confirmed`, `confirm_failed`)."""

    trials: int
    waiting: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    best: float | None = None
    confirm: int = 0
    confirmed: int = 0
    confirm_failed: int = 0


@dataclass(frozen=True)
class TrialEvent:
    """A trial started, finished (with its objective) or failed (with its reason)."""

    kind: str  # "waiting", "started", "finished", "failed"
    strategy: str
    trial_id: str
    detail: str = ""

    def line(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.strategy} trial {self.trial_id} {self.kind}{tail}"


class Progress:
    """Counts of trials per strategy, and the best objective so far; `listener` sees each change."""

    def __init__(
        self,
        objective: str,
        mode: str,
        listener: Callable[[Progress], None] | None,
        on_event: Callable[[TrialEvent], None] | None = None,
    ) -> None:
        self.objective = objective
        self.mode = mode
        self.listener = listener
        self.on_event = on_event
        self.strategies: dict[str, StrategyProgress] = {}
        self.counted: set[str] = set()  # trials whose end is counted: each counts once
        self.wait: str | None = None  # why trials wait, while they wait for busy resources

    def event(self, event: TrialEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def changed(self) -> None:
        if self.listener is not None:
            self.listener(self)

    def start(self, strategy: str) -> None:
        self.strategies[strategy].running += 1
        self.changed()

    def finish(
        self,
        strategy: str,
        trial_id: str,
        *,
        failed: bool,
        value: float | None,
        was_running: bool = False,
        confirmation: bool = False,
    ) -> None:
        p = self.strategies[strategy]
        if was_running:
            p.running = max(0, p.running - 1)
        if trial_id in self.counted:
            self.changed()
            return
        self.counted.add(trial_id)
        if confirmation:
            if failed:
                p.confirm_failed += 1
            else:
                p.confirmed += 1
            self.changed()
            return
        if failed:
            p.failed += 1
        else:
            p.done += 1
        if value is not None and (
            p.best is None or (value > p.best if self.mode == "max" else value < p.best)
        ):
            p.best = value
        self.changed()


class ProgressCallback(tune.Callback):
    """Counts each trial's start and end into a `Progress`.

    Tune pickles its callbacks into the experiment state, and a resumed sweep runs the
    unpickled copies: the progress view (which holds the caller's listeners) is not pickled,
    and the run loop binds the one of the resumed run with `bind`.
    """

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress
        self._running: set[str] = set()
        self._waiting_since: dict[str, float] = {}
        self._free_checked = 0.0

    def bind(self, progress: Progress) -> None:
        self.progress = progress

    def __getstate__(self) -> dict[str, Any]:
        # Times of this process's clock mean nothing to the resumed one.
        return {**self.__dict__, "progress": None, "_waiting_since": {}, "_free_checked": 0.0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_waiting_since": {}, "_free_checked": 0.0, **state})

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Count the trials that wait; say so once they wait for busy resources."""
        progress = self.progress
        if progress is None:
            return
        now = time.monotonic()
        waiting = [t for t in trials if t.status == "PENDING"]
        since = {t.trial_id: self._waiting_since.get(t.trial_id, now) for t in waiting}
        self._waiting_since = since
        counts = Counter(split_config(t.config)[0] or "" for t in waiting)
        changed = False
        for name, p in progress.strategies.items():
            if p.waiting != counts.get(name, 0):
                p.waiting, changed = counts.get(name, 0), True
        wait = progress.wait
        if not waiting:
            wait = None
        elif now - min(since.values()) >= WAIT_NOTED_S and now - self._free_checked >= (
            FREE_CHECKED_S
        ):
            self._free_checked = now
            oldest = min(waiting, key=lambda t: since[t.trial_id])
            wait = busy_resources(oldest, sum(t.status == "RUNNING" for t in trials))
            if wait is not None and progress.wait is None:
                strategy = split_config(oldest.config)[0] or ""
                progress.event(TrialEvent("waiting", strategy, oldest.trial_id, wait))
        if wait != progress.wait:
            progress.wait, changed = wait, True
        if changed:
            progress.changed()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        strategy = split_config(trial.config)[0] or ""
        if self.progress is None or trial.trial_id in self._running:
            return
        self._running.add(trial.trial_id)
        self.progress.start(strategy)
        self.progress.event(TrialEvent("started", strategy, trial.trial_id))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended(trial, failed=True)

    def _ended(self, trial: Any, failed: bool) -> None:
        was_running = trial.trial_id in self._running
        self._running.discard(trial.trial_id)
        if self.progress is None:
            return
        strategy = split_config(trial.config)[0] or ""
        confirmed = confirms(trial.config)
        metric = self.progress.objective if confirmed is None else "test_accuracy"
        value = None
        if not failed:
            v = (trial.last_result or {}).get(metric)
            value = float(v) if isinstance(v, (int, float)) else None
        self.progress.finish(
            strategy,
            trial.trial_id,
            failed=failed,
            value=value if confirmed is None else None,
            was_running=was_running,
            confirmation=confirmed is not None,
        )
        if failed:
            detail = trial_error(trial)[1]
        elif value is not None:
            detail = f"{metric} = {value:.6g}"
        else:
            detail = "stopped early"
        if confirmed is not None:
            detail = f"confirms trial {confirmed}, seed {trial.config.get('seed')}: {detail}"
        kind = "failed" if failed else "finished"
        self.progress.event(TrialEvent(kind, strategy, trial.trial_id, detail))


def busy_resources(trial: Any, running: int) -> str | None:
    """What a waiting trial asks and the cluster has free, where others hold what the sweep
    could use; None where the trial fits (it waits for its worker to start), or where the
    sweep's own `running` trials fill the cluster (the trial waits its turn)."""
    import ray

    asks = {k: v for k, v in trial.placement_group_factory.required_resources.items() if v > 0}
    free, total = ray.available_resources(), ray.cluster_resources()
    if all(free.get(k, 0.0) >= v for k, v in asks.items()):
        return None
    if asks and running >= min(int(total.get(k, 0.0) // v) for k, v in asks.items()):
        return None
    asked = ", ".join(f"{v:g} {k}" for k, v in asks.items())
    have = ", ".join(f"{free.get(k, 0.0):g} of {total.get(k, 0.0):g} {k}" for k in asks)
    return (
        f"for busy resources: each trial asks {asked}; free now {have}, "
        f"with {running} of the sweep's trials running"
    )


__all__ = ["Progress", "ProgressCallback", "StrategyProgress", "TrialEvent", "busy_resources"]
