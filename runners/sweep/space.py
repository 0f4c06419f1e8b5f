"""A strategy's search space for a sweep, derived from its `Params` and recipe.

The ranges are never written twice: the defaults come from the `Search` metadata on the
strategy's params and its recipe's training knobs; a sweep spec may narrow, move or replace
them within the fields' bounds, or fix a field with a value.
"""

from __future__ import annotations

import random
from typing import Any

import pydantic

from schemas.errors import FieldError, validation_field
from schemas.sweep import StrategySpec
from strategies import get_strategy
from strategies.base import Search, Strategy
from strategies.registry import UnknownStrategyError
from strategies.space import (
    SpaceError,
    default_search,
    parse_search,
    random_suggest,
    sample_point,
    searchable_fields,
    trial_suggest,
)


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
    check_feasible(cls, space, spec.params, where=where)
    return cls, space


def check_feasible(
    cls: type[Strategy], space: dict[str, Search], fixed: dict[str, Any], *, where: str
) -> None:
    """Refuse a space whose ranges, with the fixed params, leave no valid combination: every
    range must leave a value under the strategy's relations, and some drawn point (all low
    ends, all high ends, then random ones) must pass the strategy's own validators."""
    if not space:
        return
    rng = random.Random(0)
    first: FieldError | None = None
    for attempt in range(_FEASIBILITY_DRAWS):
        try:
            end = "low" if attempt == 0 else "high" if attempt == 1 else None
            point = sample_point(cls.Params, space, fixed, random_suggest(rng, end))
        except SpaceError as e:
            raise SpecError(f"{where}.search.{e.field}", e.reason) from None
        try:
            check_params(cls, {**fixed, **point}, where=f"{where}.params")
            return
        except SpecError as e:
            first = first or e
    assert first is not None
    raise SpecError(
        first.field, f"{first.reason} (in every one of {_FEASIBILITY_DRAWS} points drawn)"
    )


_FEASIBILITY_DRAWS = 32


class ConstrainedSpace:
    """The define-by-run space of one strategy for OptunaSearch: `sample_point` over Optuna's
    trial, so each range is narrowed by the strategy's relations before it is drawn.

    Picklable (Tune saves its searcher): it holds the strategy's name, not its class.
    """

    def __init__(self, strategy: str, space: dict[str, Search], fixed: dict[str, Any]) -> None:
        self.strategy = strategy
        self.space = dict(space)
        self.fixed = dict(fixed)

    def __call__(self, trial: Any) -> None:
        cls = get_strategy(self.strategy)
        sample_point(cls.Params, self.space, self.fixed, trial_suggest(trial))


def check_params(cls: type[Strategy], params: dict[str, Any], *, where: str) -> None:
    """Validate fixed params (strategy params and training knobs) without building anything."""
    from strategies.space import TrainingKnobs, split_params

    own, knobs = split_params(params)
    for model, values in ((cls.Params, own), (TrainingKnobs, knobs)):
        try:
            model.model_validate(values)
        except pydantic.ValidationError as e:
            raise SpecError(*validation_field(e, where)) from None


def validate_trial_params(cls: type[Strategy], params: dict[str, Any]) -> None:
    """Check that a sampled point is valid for the strategy (cross-field validators)."""
    check_params(cls, params, where="params")
