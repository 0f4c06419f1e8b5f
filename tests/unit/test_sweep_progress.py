"""The progress of a sweep: counted by a Tune callback that survives the pickling Tune does to
resume, each trial's end counted once, and Tune's environment set only while it runs."""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace
from typing import Any

import pytest

from runners.sweep import progress as sweep_progress
from runners.sweep import run as sweep
from runners.sweep.progress import Progress, ProgressCallback, StrategyProgress, TrialEvent
from runners.sweep.run import TUNE_DEFAULTS, TUNE_REQUIRED, tune_environment
from runners.sweep.search import STRATEGY_KEY


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


def _waiting(tid: str, strategy: str, status: str = "PENDING") -> Any:
    trial = _trial(tid, strategy)
    trial.status = status
    return trial


def test_waiting_trials_are_counted_and_a_wait_for_busy_resources_noted_once(
    monkeypatch,
) -> None:
    monkeypatch.setattr(sweep_progress, "WAIT_NOTED_S", 0.0)
    monkeypatch.setattr(sweep_progress, "FREE_CHECKED_S", 0.0)
    free: list[str | None] = ["for busy resources: x"]
    asked: list[int] = []

    def busy(trial: Any, running: int) -> str | None:
        asked.append(running)
        return free[0]

    monkeypatch.setattr(sweep_progress, "busy_resources", busy)
    seen: list[Progress] = []
    events: list[TrialEvent] = []
    progress = _progress(seen, events)
    cb = ProgressCallback(progress)
    trials = [_waiting("t1", "a"), _waiting("t2", "a"), _waiting("t3", "b", "RUNNING")]
    cb.on_step_end(0, trials)
    cb.on_step_end(1, trials)  # still waiting: noted once
    assert (progress.strategies["a"].waiting, progress.strategies["b"].waiting) == (2, 0)
    assert progress.wait == "for busy resources: x" and asked == [1, 1]
    assert [(e.kind, e.trial_id, e.detail) for e in events] == [
        ("waiting", "t1", "for busy resources: x")
    ]
    trials[0].status = "RUNNING"
    free[0] = None  # the resources came free
    cb.on_step_end(2, trials)
    assert progress.strategies["a"].waiting == 1 and progress.wait is None
    cb.on_step_end(3, [])
    assert progress.strategies["a"].waiting == 0 and len(events) == 1
    copy = pickle.loads(pickle.dumps(cb))
    assert copy._waiting_since == {}  # this process's clock means nothing to the next one
    old = ProgressCallback()
    del old._waiting_since, old._free_checked  # as pickled before trials were counted waiting
    restored = pickle.loads(pickle.dumps(old))
    restored.bind(_progress([], []))
    restored.on_step_end(0, [_waiting("t1", "a")])
    assert restored.progress.strategies["a"].waiting == 1


@pytest.mark.slow
def test_a_sweep_shows_its_wait_for_busy_resources_then_runs(local_ray, tmp_path, monkeypatch):
    import threading

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from runners.sweep.run import plan_sweep, run_sweep
    from schemas.sweep import SweepSpec

    monkeypatch.setattr(sweep_progress, "WAIT_NOTED_S", 1.0)
    held = placement_group([{"CPU": 2}])  # other work holds both CPUs of the cluster
    ray.get(held.ready(), timeout=60)
    spec = SweepSpec.model_validate(
        {
            "name": "busy",
            "epochs": 1,
            "trials_per_strategy": 2,
            "confirmation": {"enabled": False},  # the search's trials wait and run
            "strategies": [{"name": "full_precision"}],
        }
    )
    events: list[TrialEvent] = []
    views: list[tuple[str | None, int, int]] = []

    def on_event(event: TrialEvent) -> None:
        events.append(event)
        if event.kind == "waiting":  # the other work ends a second later
            threading.Timer(1.0, remove_placement_group, [held]).start()

    def on_progress(p: Progress) -> None:
        fp = p.strategies["full_precision"]
        views.append((p.wait, fp.waiting, fp.running))

    summary = run_sweep(
        plan_sweep(spec, home=tmp_path / "data"), on_progress=on_progress, on_event=on_event
    )
    assert summary.completed == 2
    # The wait is shown first, then the trials start; a loaded machine may note the wait
    # again (the other trial's) before the resources free up.
    kinds = [e.kind for e in events]
    assert kinds[0] == "waiting" and "started" in kinds
    assert set(kinds[: kinds.index("started")]) == {"waiting"}
    assert events[0].detail == (
        "for busy resources: each trial asks 1 CPU; free now 0 of 2 CPU, "
        "with 0 of the sweep's trials running"
    )
    assert (events[0].detail, 2, 0) in views  # the view showed both trials waiting, and why
    assert views[-1][:2] == (None, 0)
