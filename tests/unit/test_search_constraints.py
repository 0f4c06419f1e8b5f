"""Cross-field constraints of a strategy's params, declared once as `Relation`s: validation
refuses a combination that breaks one, the sweep's search never draws one, and a spec that
fixes an impossible combination is refused at planning."""

from __future__ import annotations

from pathlib import Path

import optuna
import pydantic
import pytest
import yaml

from runners.engine.trial import resolve
from runners.sweep.plan import base_trial
from runners.sweep.search import StrategySearch, sampler_for
from runners.sweep.space import ConstrainedSpace, SpecError, strategy_space
from schemas.sweep import StrategySpec, SweepSpec
from strategies import get_strategy

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_no_trial_drawn_for_an_example_spec_is_refused(path: Path) -> None:
    spec = SweepSpec.model_validate(yaml.safe_load(path.read_text()))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for i, s in enumerate(spec.strategies):
        _, space = strategy_space(s, i)
        if not space:
            continue
        directions = ["maximize" if o.mode == "max" else "minimize" for o in spec.objectives]
        study = optuna.create_study(directions=directions, sampler=sampler_for(spec, 40))
        draw = ConstrainedSpace(s.name, space, dict(s.params))
        for n in range(40):
            trial = study.ask()
            draw(trial)
            config = base_trial(spec, s).model_copy(update={"params": {**s.params, **trial.params}})
            resolve(config)  # raises ConfigError for a refused combination
            study.tell(trial, [float(n % 7)] * len(directions))


def test_relation_refuses_a_combination_naming_the_field() -> None:
    cls = get_strategy("bit_learning")
    with pytest.raises(pydantic.ValidationError) as e:
        cls.Params(bits=2, trainable_msbs=2)
    err = e.value.errors()[0]
    assert err["loc"] == ("trainable_msbs",)
    assert err["msg"] == "2 breaks trainable_msbs <= bits - 1 (bits = 2)"


def test_a_range_narrowed_by_a_fixed_param_is_drawn_inside_the_relation() -> None:
    spec = StrategySpec(name="bit_learning", params={"trainable_msbs": 2}, search={"bits": [2, 8]})
    cls, space = strategy_space(spec, 0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    draws = []
    for _ in range(30):
        trial = study.ask()
        ConstrainedSpace(cls.name, space, dict(spec.params))(trial)
        draws.append(trial.params["bits"])
    assert min(draws) == 3 and max(draws) <= 8


def test_a_fixed_combination_no_range_can_satisfy_is_refused_at_planning() -> None:
    spec = StrategySpec(name="bit_learning", params={"trainable_msbs": 5}, search={"bits": [2, 4]})
    with pytest.raises(SpecError) as e:
        strategy_space(spec, 0)
    assert e.value.field == "strategies.0.search.bits"
    assert "trainable_msbs <= bits - 1" in e.value.reason


def test_fixed_params_that_break_a_relation_are_refused_at_planning() -> None:
    spec = StrategySpec(name="bit_learning", params={"bits": 2, "trainable_msbs": 2})
    with pytest.raises(SpecError) as e:
        strategy_space(spec, 0)
    assert e.value.field == "strategies.0.params.trainable_msbs"


def test_ranges_that_only_ever_break_a_validator_are_refused_at_planning() -> None:
    spec = StrategySpec(
        name="bit_learning",
        params={"train_sign": False},
        search={"trainable_msbs": {"choices": [0]}},
        search_defaults=False,
    )
    with pytest.raises(SpecError) as e:
        strategy_space(spec, 0)
    assert e.value.field == "strategies.0.params.train_sign"
    assert "no bit would train" in e.value.reason


def searcher(spec: StrategySpec, storage: optuna.storages.BaseStorage, study: str, seed: int):
    """The sweep's searcher for one strategy, on a random sampler."""
    cls, space = strategy_space(spec, 0)
    return StrategySearch(
        space=ConstrainedSpace(cls.name, space, dict(spec.params)),
        metric="test_accuracy",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=seed),
        study_name=study,
        storage=storage,
    )


def test_the_searcher_redraws_a_point_a_validator_refuses() -> None:
    # train_sign=false with trainable_msbs=0 trains no bit: no relation says so, the
    # strategy's validator does; the searcher must never hand that point to Tune.
    spec = StrategySpec(
        name="bit_learning",
        search={"train_sign": [False, True], "trainable_msbs": [0, 1]},
        search_defaults=False,
    )
    storage = optuna.storages.InMemoryStorage()
    search = searcher(spec, storage, "constraints", seed=1)
    configs = [search.suggest(f"t{i}") for i in range(30)]
    assert all(isinstance(c, dict) for c in configs)
    assert not any(c["train_sign"] is False and c["trainable_msbs"] == 0 for c in configs)  # type: ignore[index]
    refused = [
        t for t in optuna.load_study(study_name="constraints", storage=storage).trials
        if "bitsweep.refused" in t.user_attrs
    ]  # fmt: skip
    assert refused and all(t.state == optuna.trial.TrialState.FAIL for t in refused)
    assert "no bit would train" in refused[0].user_attrs["bitsweep.refused"]


def test_the_searcher_does_not_spend_a_trial_on_a_repeated_point() -> None:
    spec = StrategySpec(
        name="full_precision", search={"optimizer": ["adam", "sgd"]}, search_defaults=False
    )
    storage = optuna.storages.InMemoryStorage()
    search = searcher(spec, storage, "repeats", seed=0)
    first, second = search.suggest("a"), search.suggest("b")
    assert first != second  # two points only: the second trial gets the other one
    refused = [
        t.user_attrs["bitsweep.refused"]
        for t in optuna.load_study(study_name="repeats", storage=storage).trials
        if "bitsweep.refused" in t.user_attrs
    ]
    assert all(r.startswith("repeats trial") for r in refused)
