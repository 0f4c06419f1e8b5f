"""The progress of a sweep: trials running, done and failed per strategy and the best objective
so far, counted by a Tune callback and shown by whoever listens (the CLI's live table)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray import tune

from runners.sweep_search import split_config
from runners.tracking import trial_error


@dataclass
class StrategyProgress:
    trials: int
    running: int = 0
    done: int = 0
    failed: int = 0
    best: float | None = None


@dataclass(frozen=True)
class TrialEvent:
    """A trial started, finished (with its objective) or failed (with its reason)."""

    kind: str  # "started", "finished", "failed"
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
    ) -> None:
        p = self.strategies[strategy]
        if was_running:
            p.running = max(0, p.running - 1)
        if trial_id in self.counted:
            self.changed()
            return
        self.counted.add(trial_id)
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

    def bind(self, progress: Progress) -> None:
        self.progress = progress

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "progress": None}

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
        value = None
        if not failed:
            v = (trial.last_result or {}).get(self.progress.objective)
            value = float(v) if isinstance(v, (int, float)) else None
        self.progress.finish(
            strategy, trial.trial_id, failed=failed, value=value, was_running=was_running
        )
        if failed:
            detail = trial_error(trial)[1]
        elif value is not None:
            detail = f"{self.progress.objective} = {value:.6g}"
        else:
            detail = "stopped early"
        kind = "failed" if failed else "finished"
        self.progress.event(TrialEvent(kind, strategy, trial.trial_id, detail))


__all__ = ["Progress", "ProgressCallback", "StrategyProgress", "TrialEvent"]
