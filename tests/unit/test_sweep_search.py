"""The searcher of a sweep's one Tune experiment: each strategy within its budget, strategies
interleaved from the first trial, finished trials told to their own strategy's search, and its
state carried through a save and restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from runners.sweep.search import STRATEGY_KEY, Confirm, SweepSearcher, split_config
from schemas.names import CONFIRMS_KEY, FINAL_KEY


class _Search:
    """Stands in for a strategy's Optuna search: draws x = 0, 1, 2, ..., or nothing while
    `busy`, and records what it is told."""

    def __init__(self) -> None:
        self.drawn = 0
        self.busy = False
        self.told: list[tuple[str, Any, bool]] = []

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.busy:
            return None
        self.drawn += 1
        return {"x": self.drawn - 1}

    def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
        self.told.append((trial_id, result, error))


def _searcher(a: _Search, budgets: dict[str, int], confirm: Confirm | None = None) -> SweepSearcher:
    return SweepSearcher(
        searches={"a": a, "b": None},  # type: ignore[dict-item]
        budgets=budgets,
        seeds={"a": [], "b": [7, 8, 9]},
        metric="best_val_accuracy",
        mode="max",
        confirm=confirm,
    )


CONFIRM = Confirm(seeds=[100, 101], objectives=[("best_val_accuracy", "max")], max_configs=3)


def _final(val: float, test: float) -> dict[str, Any]:
    return {FINAL_KEY: 1, "best_val_accuracy": val, "test_accuracy": test}


def test_strategies_alternate_within_their_budgets_then_finish() -> None:
    searcher = _searcher(_Search(), {"a": 3, "b": 2})
    drawn = [searcher.suggest(f"t{i}") for i in range(6)]
    assert drawn == [
        {STRATEGY_KEY: "a", "x": 0},
        {STRATEGY_KEY: "b", "seed": 7},
        {STRATEGY_KEY: "a", "x": 1},
        {STRATEGY_KEY: "b", "seed": 8},
        {STRATEGY_KEY: "a", "x": 2},
        Searcher.FINISHED,
    ]
    assert split_config({STRATEGY_KEY: "b", "seed": 8}) == ("b", {"seed": 8})


def test_a_strategy_that_cannot_draw_does_not_hold_up_the_others() -> None:
    a = _Search()
    a.busy = True
    searcher = _searcher(a, {"a": 2, "b": 3})
    assert [searcher.suggest(f"t{i}") for i in range(4)] == [
        {STRATEGY_KEY: "b", "seed": 7},
        {STRATEGY_KEY: "b", "seed": 8},
        {STRATEGY_KEY: "b", "seed": 9},
        None,  # a may draw later: not finished
    ]
    a.busy = False
    assert searcher.suggest("t4") == {STRATEGY_KEY: "a", "x": 0}


def test_finished_trials_reach_their_own_strategys_search_only() -> None:
    a = _Search()
    searcher = _searcher(a, {"a": 1, "b": 1})
    searcher.suggest("ta")
    searcher.suggest("tb")
    searcher.on_trial_complete("tb", {"test_accuracy": 0.5})
    searcher.on_trial_complete("ta", {"test_accuracy": 0.9})
    assert a.told == [("ta", {"test_accuracy": 0.9}, False)]


def test_state_survives_save_and_restore(tmp_path: Path) -> None:
    searcher = _searcher(_Search(), {"a": 2, "b": 2})
    searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = _searcher(_Search(), {"a": 2, "b": 2})
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.issued == {"a": 1, "b": 1} and restored.owner == {"t0": "a", "t1": "b"}
    assert restored.suggest("t2") == {STRATEGY_KEY: "a", "x": 1}


def test_every_sampler_survives_pickling_as_tune_saves_it():
    import pickle

    import optuna

    from runners.sweep.search import sampler_for
    from schemas.sweep import SweepSpec

    base = {"name": "p", "strategies": [{"name": "bit_learning"}]}
    two = [{"metric": "best_val_accuracy"}, {"metric": "weight_bits", "mode": "min"}]
    for spec in (
        SweepSpec.model_validate(base),
        SweepSpec.model_validate({**base, "objectives": two}),
        SweepSpec.model_validate({**base, "sampler": "random"}),
    ):
        sampler = sampler_for(spec, 8)
        copy = pickle.loads(pickle.dumps(sampler))
        assert type(copy) is type(sampler)
        n = len(spec.objectives)
        study = optuna.create_study(sampler=copy, directions=["maximize"] * n)
        study.optimize(lambda t, n=n: [t.suggest_float("x", 0, 1)] * n, n_trials=3)


def test_a_trial_ends_once_in_optuna_whenever_the_sweep_stopped(tmp_path: Path) -> None:
    # Tune's experiment snapshot can predate a trial's end: the resumed experiment ends that
    # trial again, from its checkpoint. Optuna hears of each trial's end once.
    import optuna

    from runners.sweep.plan import plan_sweep
    from runners.sweep.search import fail_lost_study_trials, study_name, sweep_searcher
    from runners.sweep.tracking import TUNE_TRIAL_ATTR
    from schemas.sweep import SweepSpec

    spec = SweepSpec.model_validate(
        {"name": "once", "trials_per_strategy": 3, "strategies": [{"name": "bit_learning"}]}
    )
    plan = plan_sweep(spec, home=tmp_path / "data")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = sweep_searcher(plan, "s1", storage)
    for tid in ("t0", "t1", "t2"):
        assert isinstance(searcher.suggest(tid), dict)
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot
    searcher.on_trial_complete("t0", {"best_val_accuracy": 0.5})  # ends after the snapshot
    name = study_name("s1", "bit_learning")
    fail_lost_study_trials(storage, name)  # the stop: t1 and t2 were running

    def complete() -> list[str]:
        study = optuna.load_study(study_name=name, storage=storage)
        done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        return sorted(t.user_attrs[TUNE_TRIAL_ATTR] for t in done)

    for _ in range(2):  # resumed, and resumed again: every end reported once more
        resumed = sweep_searcher(plan, "s1", storage)
        resumed.restore(str(tmp_path / "searcher.pkl"))
        for tid in ("t0", "t1", "t2"):
            resumed.on_trial_complete(tid, {"best_val_accuracy": 0.75})
        assert complete() == ["t0", "t1", "t2"]
    study = optuna.load_study(study_name=name, storage=storage)
    continued = [t for t in study.get_trials() if "bitsweep.continues_trial" in t.user_attrs]
    assert sorted(t.user_attrs[TUNE_TRIAL_ATTR] for t in continued) == ["t1", "t2"]


def test_each_strategy_is_confirmed_once_its_search_has_ended() -> None:
    a = _Search()
    searcher = _searcher(a, {"a": 2, "b": 1}, CONFIRM)
    drawn = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [split_config(d)[0] for d in drawn if d] == ["a", "b", "a"]
    assert searcher.suggest("wait") is None  # searches running: nothing to issue, not finished
    # a's best on validation is t2 (x = 1), though t0 scored higher on test.
    searcher.on_trial_complete("t0", _final(0.80, 0.99))
    assert searcher.suggest("wait") is None  # t2 still runs
    searcher.on_trial_complete("t2", _final(0.90, 0.50))
    assert searcher.suggest("c0") == {STRATEGY_KEY: "a", "x": 1, "seed": 100, CONFIRMS_KEY: "t2"}
    assert searcher.suggest("c1") == {STRATEGY_KEY: "a", "x": 1, "seed": 101, CONFIRMS_KEY: "t2"}
    assert searcher.suggest("wait") is None  # b's trial runs
    searcher.on_trial_complete("t1", _final(0.7, 0.7))
    assert searcher.suggest("c2") == {STRATEGY_KEY: "b", "seed": 100, CONFIRMS_KEY: "t1"}
    assert searcher.suggest("c3") == {STRATEGY_KEY: "b", "seed": 101, CONFIRMS_KEY: "t1"}
    assert searcher.suggest("end") == Searcher.FINISHED
    for tid in ("c0", "c1", "c2", "c3"):
        searcher.on_trial_complete(tid, _final(0.99, 0.99))
    assert [t for t, _, _ in a.told] == ["t0", "t2"]  # confirmations are never told to Optuna
    assert searcher.selected == {"a": ["t2"], "b": ["t1"]}


def test_failed_stopped_and_unfinished_trials_are_never_selected() -> None:
    searcher = _searcher(_Search(), {"a": 3, "b": 1}, CONFIRM)
    for i in range(4):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", {"best_val_accuracy": 0.99})  # stopped early: no final
    searcher.on_trial_complete("t2", _final(0.99, 0.9), error=True)
    searcher.on_trial_complete("t3", _final(0.5, 0.5))
    searcher.on_trial_complete("t1", None, error=True)  # b: its only trial failed
    assert searcher.suggest("c0") == {STRATEGY_KEY: "a", "x": 2, "seed": 100, CONFIRMS_KEY: "t3"}
    assert searcher.suggest("c1")[CONFIRMS_KEY] == "t3"
    assert searcher.suggest("end") == Searcher.FINISHED  # b: nothing to confirm


def test_issued_confirmations_survive_save_and_restore(tmp_path: Path) -> None:
    searcher = _searcher(_Search(), {"a": 1, "b": 1}, CONFIRM)
    searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.on_trial_complete("t0", _final(0.9, 0.9))
    assert searcher.suggest("c0")[CONFIRMS_KEY] == "t0"  # type: ignore[index]
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = _searcher(_Search(), {"a": 1, "b": 1}, CONFIRM)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("c1") == {STRATEGY_KEY: "a", "x": 0, "seed": 101, CONFIRMS_KEY: "t0"}
    assert restored.suggest("wait") is None  # b's search trial still runs
