"""The progress of a sweep: counted by a Tune callback that survives the pickling Tune does to
resume, each trial's end counted once, and Tune's environment set only while it runs."""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace
from typing import Any

import pytest

from runners import sweep
from runners.sweep import TUNE_DEFAULTS, TUNE_REQUIRED, tune_environment
from runners.sweep_progress import Progress, ProgressCallback, StrategyProgress, TrialEvent
from runners.sweep_search import STRATEGY_KEY


def _trial(tid: str, strategy: str, result: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(
        trial_id=tid, config={STRATEGY_KEY: strategy, "lr": 0.1}, last_result=result
    )


def _progress(seen: list[Progress], events: list[TrialEvent]) -> Progress:
    p = Progress("test_accuracy", "max", seen.append, events.append)
    p.strategies = {"a": StrategyProgress(trials=2), "b": StrategyProgress(trials=1)}
    return p


def test_counts_starts_ends_and_best_per_strategy() -> None:
    seen: list[Progress] = []
    events: list[TrialEvent] = []
    progress = _progress(seen, events)
    cb = ProgressCallback(progress)
    cb.on_trial_start(0, [], _trial("t1", "a"))
    cb.on_trial_start(0, [], _trial("t2", "a"))
    cb.on_trial_start(0, [], _trial("t3", "b"))
    assert progress.strategies["a"].running == 2 and progress.strategies["b"].running == 1
    cb.on_trial_complete(0, [], _trial("t1", "a", {"test_accuracy": 0.5}))
    cb.on_trial_complete(0, [], _trial("t2", "a", {"test_accuracy": 0.75}))
    cb.on_trial_complete(0, [], _trial("t3", "b", {"val_accuracy": 0.1}))  # stopped early
    a, b = progress.strategies["a"], progress.strategies["b"]
    assert (a.running, a.done, a.failed, a.best) == (0, 2, 0, 0.75)
    assert (b.running, b.done, b.best) == (0, 1, None)
    assert [e.kind for e in events] == ["started"] * 3 + ["finished"] * 3
    assert events[-1].line() == "b trial t3 finished: stopped early"
    assert events[-2].detail == "test_accuracy = 0.75"
    assert seen and seen[-1] is progress


def test_a_trial_ends_once_even_when_told_again() -> None:
    progress = _progress([], [])
    # Counted from the records of a resumed sweep, then reported again by Tune.
    progress.finish("a", "t1", failed=False, value=0.5)
    cb = ProgressCallback(progress)
    cb.on_trial_start(0, [], _trial("t1", "a"))
    cb.on_trial_complete(0, [], _trial("t1", "a", {"test_accuracy": 0.5}))
    cb.on_trial_complete(0, [], _trial("t1", "a", {"test_accuracy": 0.5}))
    a = progress.strategies["a"]
    assert (a.running, a.done, a.failed) == (0, 1, 0)


def test_pickled_callback_drops_the_view_and_is_bound_again() -> None:
    progress = _progress([], [])
    cb = ProgressCallback(progress)
    cb.on_trial_start(0, [], _trial("t1", "a"))
    copy = pickle.loads(pickle.dumps(cb))  # what a resumed Tune experiment runs
    assert copy.progress is None
    copy.on_trial_complete(0, [], _trial("t1", "a", {"test_accuracy": 0.5}))  # nothing to count
    resumed = _progress([], [])
    resumed.strategies["a"].running = 1
    copy.bind(resumed)
    copy.on_trial_error(0, [], _trial("t2", "a"))
    copy.on_trial_start(0, [], _trial("t3", "a"))
    copy.on_trial_complete(0, [], _trial("t3", "a", {"test_accuracy": 0.9}))
    a = resumed.strategies["a"]
    assert (a.done, a.failed, a.best) == (1, 1, 0.9)


def test_no_module_keeps_a_registry_of_running_sweeps() -> None:
    assert not [k for k, v in vars(sweep).items() if isinstance(v, dict) and "PROGRESS" in k]


def test_tune_environment_is_set_while_tune_runs_and_restored_after(monkeypatch) -> None:
    name = next(iter(TUNE_DEFAULTS))
    required = next(iter(TUNE_REQUIRED))
    monkeypatch.setenv(name, "user's choice")
    monkeypatch.delenv(required, raising=False)
    with tune_environment():
        assert os.environ[name] == "user's choice"  # a default never overrides the user
        assert os.environ[required] == TUNE_REQUIRED[required]
    assert os.environ[name] == "user's choice"
    assert required not in os.environ


def test_tune_environment_is_restored_when_the_experiment_raises(monkeypatch) -> None:
    for k in (*TUNE_DEFAULTS, *TUNE_REQUIRED):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError), tune_environment():
        raise RuntimeError("trial engine broke")
    assert not [k for k in (*TUNE_DEFAULTS, *TUNE_REQUIRED) if k in os.environ]
