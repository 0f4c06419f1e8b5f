"""A strategy's search space for a sweep, derived from its `Params` and recipe.

The ranges are never written twice: the defaults come from the `Search` metadata on the
strategy's params and its recipe's training knobs; a sweep spec may narrow, move or replace
them within the fields' bounds, or fix a field with a value.
"""

from __future__ import annotations

from typing import Any

import optuna
import pydantic

from schemas.errors import FieldError, validation_field
from schemas.sweep import StrategySpec
from strategies import get_strategy
from strategies.base import Search, Strategy
from strategies.registry import UnknownStrategyError
from strategies.space import SpaceError, default_search, parse_search, searchable_fields


class SpecError(FieldError):
    """A sweep spec that cannot run. `field` names the culprit, `reason` says why."""


def strategy_space(spec: StrategySpec, index: int) -> tuple[type[Strategy], dict[str, Search]]:
    """The strategy class and the ranges a sweep searches for it. Raises `SpecError`."""
    where = f"strategies.{index}"
    try:
        cls = get_strategy(spec.name)
    except UnknownStrategyError as e:
        raise SpecError(f"{where}.name", str(e)) from None
    fields = searchable_fields(cls.Params)
    space: dict[str, Search] = {}
    if spec.search_defaults:
        space.update(cls.recipe.search)
        space.update(default_search(cls.Params))
    for name, raw in spec.search.items():
        if name not in fields:
            raise SpecError(f"{where}.search.{name}", f"{cls.name} has no param {name!r}")
        try:
            space[name] = parse_search(name, raw, fields[name])
        except SpaceError as e:
            raise SpecError(f"{where}.search.{name}", e.reason) from None
    for name in spec.params:
        if name not in fields:
            raise SpecError(f"{where}.params.{name}", f"{cls.name} has no param {name!r}")
        space.pop(name, None)
    check_params(cls, spec.params, where=f"{where}.params")
    return cls, space


def check_params(cls: type[Strategy], params: dict[str, Any], *, where: str) -> None:
    """Validate fixed params (strategy params and training knobs) without building anything."""
    from strategies.space import TrainingKnobs, split_params

    own, knobs = split_params(params)
    for model, values in ((cls.Params, own), (TrainingKnobs, knobs)):
        try:
            model.model_validate(values)
        except pydantic.ValidationError as e:
            raise SpecError(*validation_field(e, where)) from None


def to_distribution(name: str, search: Search, kind: str) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one searched field."""
    if search.choices is not None:
        return optuna.distributions.CategoricalDistribution(list(search.choices))
    assert search.low is not None and search.high is not None
    if kind == "int":
        step = int(search.step) if search.step and not search.log else 1
        return optuna.distributions.IntDistribution(
            int(search.low), int(search.high), log=search.log, step=step
        )
    return optuna.distributions.FloatDistribution(
        search.low, search.high, log=search.log, step=None if search.log else search.step
    )


def optuna_space(
    cls: type[Strategy], space: dict[str, Search]
) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions for `space`, typed by the fields they search."""
    from strategies.space import field_kind

    fields = searchable_fields(cls.Params)
    return {
        name: to_distribution(name, s, field_kind(fields[name]))
        for name, s in sorted(space.items())
    }


def validate_trial_params(cls: type[Strategy], params: dict[str, Any]) -> None:
    """Check that a sampled point is valid for the strategy (cross-field validators)."""
    check_params(cls, params, where="params")
