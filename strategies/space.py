"""Bounds and search ranges of a strategy's params, read from its `Params` model.

Validation and search space are written once, on the pydantic fields: a field's bounds come
from its `Field(ge=..., le=...)` constraints and its search range from a `Search` in its
`Annotated` metadata. Training knobs (`lr`, `optimizer`, ...) are searchable the same way.
"""

from __future__ import annotations

import math
import random
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from schemas.errors import FieldError
from schemas.trial import TrainingKnobs
from strategies.params import Relation, Search, StrategyParams

TRAINING_KNOBS: frozenset[str] = frozenset(TrainingKnobs.model_fields)
RESERVED_NAMES: frozenset[str] = TRAINING_KNOBS | {"strategy", "epochs", "seed", "schedule"}
"""Names a strategy's params may not take: a trial's run logs its training settings under them."""


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(strategy params, training knobs) of a flat params dict."""
    own = {k: v for k, v in params.items() if k not in TRAINING_KNOBS}
    knobs = {k: v for k, v in params.items() if k in TRAINING_KNOBS}
    return own, knobs


class SpaceError(FieldError):
    """A params dict or a search range that a strategy refuses. `field` names the culprit."""


def field_bounds(info: FieldInfo) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low_inclusive, high_inclusive) from a field's constraints."""
    low = high = None
    lo_inc = hi_inc = True
    for m in info.metadata:
        if isinstance(m, at.Ge):
            low, lo_inc = float(m.ge), True  # type: ignore[arg-type]
        elif isinstance(m, at.Gt):
            low, lo_inc = float(m.gt), False  # type: ignore[arg-type]
        elif isinstance(m, at.Le):
            high, hi_inc = float(m.le), True  # type: ignore[arg-type]
        elif isinstance(m, at.Lt):
            high, hi_inc = float(m.lt), False  # type: ignore[arg-type]
    return low, high, lo_inc, hi_inc


def field_kind(info: FieldInfo) -> str:
    """'int', 'float', 'bool', 'categorical' or 'other'."""
    ann = info.annotation
    if typing.get_origin(ann) is Literal:
        return "categorical"
    if ann is bool:
        return "bool"
    if ann is int:
        return "int"
    if ann is float:
        return "float"
    return "other"


def field_choices(info: FieldInfo) -> tuple[Any, ...] | None:
    ann = info.annotation
    if typing.get_origin(ann) is Literal:
        return typing.get_args(ann)
    if ann is bool:
        return (False, True)
    return None


def default_search(model: type[BaseModel]) -> dict[str, Search]:
    """The `Search` attached to each field of `model` that has one."""
    out: dict[str, Search] = {}
    for name, info in model.model_fields.items():
        for m in info.metadata:
            if isinstance(m, Search):
                out[name] = m
    return out


def _in_bounds(value: float, info: FieldInfo) -> bool:
    low, high, lo_inc, hi_inc = field_bounds(info)
    if low is not None and (value < low or (value == low and not lo_inc)):
        return False
    return not (high is not None and (value > high or (value == high and not hi_inc)))


def check_search(name: str, search: Search, info: FieldInfo) -> None:
    """Raise `SpaceError` unless `search` lies inside the field's type and bounds."""
    kind = field_kind(info)
    if search.choices is not None:
        allowed = field_choices(info)
        for c in search.choices:
            if allowed is not None and c not in allowed:
                raise SpaceError(name, f"choice {c!r} is not one of {list(allowed)}")
            if allowed is None and kind in ("int", "float"):
                if not isinstance(c, (int, float)) or isinstance(c, bool):
                    raise SpaceError(name, f"choice {c!r} is not a number")
                if kind == "int" and float(c) != int(c):
                    raise SpaceError(name, f"choice {c!r} is not an integer")
                if not _in_bounds(float(c), info):
                    raise SpaceError(
                        name, f"choice {c!r} is outside the bounds {bounds_text(info)}"
                    )
        return
    if kind not in ("int", "float"):
        raise SpaceError(name, f"a {kind} field takes a list of choices, not a range")
    assert search.low is not None and search.high is not None
    if kind == "int" and (search.low != int(search.low) or search.high != int(search.high)):
        raise SpaceError(name, "an integer field takes an integer range")
    for v in (search.low, search.high):
        if not _in_bounds(v, info):
            raise SpaceError(
                name,
                f"range [{_num(search.low)}, {_num(search.high)}] is outside the bounds "
                f"{bounds_text(info)}",
            )


def parse_search(name: str, raw: Any, info: FieldInfo) -> Search:
    """A spec's search entry: `[low, high]` for a numeric field, a list of choices for a
    categorical or boolean one, `{low, high, log, step}` or `{choices: [...]}` in full."""
    kind = field_kind(info)
    try:
        if isinstance(raw, dict):
            unknown = set(raw) - {"low", "high", "log", "step", "choices"}
            if unknown:
                raise SpaceError(name, f"unknown search keys {sorted(unknown)}")
            if "choices" in raw:
                s = Search(choices=tuple(raw["choices"]))
            else:
                s = Search(
                    raw.get("low"), raw.get("high"), bool(raw.get("log", False)), raw.get("step")
                )
        elif isinstance(raw, (list, tuple)):
            if kind in ("int", "float"):
                if len(raw) != 2:
                    raise SpaceError(name, "a numeric range is [low, high]")
                lo, hi = raw
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
                    raise SpaceError(name, "range ends must be numbers")
                log = kind == "float" and lo > 0 and hi / lo >= 100
                s = Search(float(lo), float(hi), log=log)
            else:
                if not raw:
                    raise SpaceError(name, "needs at least one choice")
                s = Search(choices=tuple(raw))
        else:
            raise SpaceError(name, "a search entry is [low, high], a list of choices, or a mapping")
    except (TypeError, ValueError) as e:
        if isinstance(e, SpaceError):
            raise
        raise SpaceError(name, str(e)) from None
    check_search(name, s, info)
    return s


def searchable_fields(params_cls: type[StrategyParams]) -> dict[str, FieldInfo]:
    """Every field a sweep may search: the strategy's params and the training knobs."""
    fields: dict[str, FieldInfo] = dict(TrainingKnobs.model_fields)
    fields.update(params_cls.model_fields)
    return fields


def describe_params(params_cls: type[BaseModel]) -> list[dict[str, Any]]:
    """Each field with its type, default, bounds, choices, search range and description."""
    out = []
    searches = default_search(params_cls)
    for name, info in params_cls.model_fields.items():
        low, high, lo_inc, hi_inc = field_bounds(info)
        entry: dict[str, Any] = {
            "name": name,
            "type": field_kind(info),
            "default": None
            if info.is_required()
            else _jsonable(info.get_default(call_default_factory=True)),
            "description": info.description or "",
        }
        if low is not None or high is not None:
            entry["bounds"] = {
                "low": _number(low),
                "high": _number(high),
                "low_inclusive": lo_inc,
                "high_inclusive": hi_inc,
            }
        ch = field_choices(info)
        if ch is not None:
            entry["choices"] = list(ch)
        if name in searches:
            entry["search"] = searches[name].as_dict()
        out.append(entry)
    return out


def bounds_text(info: FieldInfo) -> str:
    """A field's bounds in interval notation, e.g. `(0, 10]`."""
    low, high, lo_inc, hi_inc = field_bounds(info)
    left = "(-inf" if low is None else ("[" if lo_inc else "(") + _num(low)
    right = "inf)" if high is None else _num(high) + ("]" if hi_inc else ")")
    return f"{left}, {right}"


def _number(x: float | None) -> float | int | None:
    """A bound as a JSON number: an integer when it is one."""
    if x is None:
        return None
    return int(x) if float(x).is_integer() and abs(x) < 1e15 else float(x)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


# -- checks at registration -----------------------------------------------------------------


def check_params_class(
    params_cls: type[StrategyParams], recipe_search: Mapping[str, Search]
) -> None:
    """Raise `SpaceError` unless every `Search` lies inside its field's bounds and every
    `Relation` names numeric fields (the registry calls this for each strategy)."""
    fields = searchable_fields(params_cls)
    for name in params_cls.model_fields:
        if name in RESERVED_NAMES:
            raise SpaceError(
                name, "is a name bitsweep gives a training setting; call the param otherwise"
            )
    for name in recipe_search:
        if name not in TRAINING_KNOBS:
            raise SpaceError(
                f"recipe.search.{name}",
                f"not a training knob ({', '.join(sorted(TRAINING_KNOBS))})",
            )
    for name, search in {**recipe_search, **default_search(params_cls)}.items():
        check_search(name, search, fields[name])
    for r in params_cls.relations:
        for side in (r.left, r.right):
            if side not in params_cls.model_fields:
                raise SpaceError(f"relations.{side}", f"{r} names no field {side!r}")
            if field_kind(params_cls.model_fields[side]) not in ("int", "float"):
                raise SpaceError(f"relations.{side}", f"{r} needs numeric fields")


# -- sampling that honours the relations ---------------------------------------------------

Suggest = Callable[[str, Search, str], Any]
"""Draws a value of field `name` from `search` (`kind` is 'int', 'float' or 'categorical');
a sweep passes Optuna's trial, the contract suite a seeded generator."""


def narrowed(
    params_cls: type[StrategyParams],
    name: str,
    search: Search,
    known: Mapping[str, Any],
    pending: Mapping[str, Search] | None = None,
) -> Search:
    """`search` narrowed by every relation between `name` and a field of `known` (a value) or
    of `pending` (a range still to be drawn: the bound its far end allows).

    Raises `SpaceError` naming `name` when no value of the range satisfies them.
    """
    pending = pending or {}
    values: dict[str, list[float]] = {}
    relations = []
    for r in params_cls.relations:
        if name not in (r.left, r.right) or r.left == r.right:
            continue
        other = _other(r, name)
        if other in known:
            values[other] = [known[other]]
        elif other in pending:
            values[other] = _ends(pending[other])
        else:
            continue
        relations.append(r)
    if not relations:
        return search
    info = searchable_fields(params_cls)[name]
    integer = field_kind(info) == "int"

    def ok(v: float) -> bool:
        # Some value of each pending field must allow v: one of its ends does when any does.
        return all(
            any(r.holds(v, o) if r.left == name else r.holds(o, v) for o in values[_other(r, name)])
            for r in relations
        )

    if search.choices is not None:
        kept = tuple(c for c in search.choices if ok(c))
        if not kept:
            raise SpaceError(name, _no_value(name, search, relations, known))
        return Search(choices=kept)
    assert search.low is not None and search.high is not None
    low, high = search.low, search.high
    for r in relations:
        ends = values[_other(r, name)]
        op, _ = r.bound_for(name, ends[0])
        bounds = [r.bound_for(name, o)[1] for o in ends]
        bound = max(bounds) if op in ("<=", "<") else min(bounds)
        if integer and op in ("<", ">"):
            bound, op = (bound - 1, "<=") if op == "<" else (bound + 1, ">=")
        if op in ("<=", "<"):
            high = min(high, math.floor(bound) if integer else bound)
        else:
            low = max(low, math.ceil(bound) if integer else bound)
    if low > high or (search.log and low <= 0):
        raise SpaceError(name, _no_value(name, search, relations, known))
    if search.step and not search.log:  # keep the grid of the original range
        low = search.low + math.ceil((low - search.low) / search.step) * search.step
        if low > high:
            raise SpaceError(name, _no_value(name, search, relations, known))
    return Search(low, high, log=search.log, step=search.step)


def _ends(search: Search) -> list[float]:
    if search.choices is not None:
        nums = [float(c) for c in search.choices if isinstance(c, (int, float))]
        return [min(nums), max(nums)] if nums else []
    assert search.low is not None and search.high is not None
    return [search.low, search.high]


def sample_point(
    params_cls: type[StrategyParams],
    space: Mapping[str, Search],
    fixed: Mapping[str, Any],
    suggest: Suggest,
) -> dict[str, Any]:
    """One point of `space`: the searched fields drawn in field order, each range narrowed by
    the relations with the fields fixed or drawn before it and with the ranges still to come.
    Raises `SpaceError` when a range leaves no value."""
    fields = searchable_fields(params_cls)
    known: dict[str, Any] = dict(fixed)
    order = [n for n in fields if n in space]
    out: dict[str, Any] = {}
    for i, name in enumerate(order):
        pending = {n: space[n] for n in order[i + 1 :]}
        search = narrowed(params_cls, name, space[name], known, pending)
        kind = "categorical" if search.choices is not None else field_kind(fields[name])
        out[name] = known[name] = suggest(name, search, kind)
    return out


def _other(r: Relation, name: str) -> str:
    return r.right if r.left == name else r.left


def _no_value(
    name: str, search: Search, relations: list[Relation], known: Mapping[str, Any]
) -> str:
    where = (
        ", ".join(
            sorted(
                {
                    f"{_other(r, name)} = {known[_other(r, name)]}"
                    for r in relations
                    if _other(r, name) in known
                }
            )
        )
        or "the ranges still to be drawn"
    )
    rng = (
        f"choices {list(search.choices)}"
        if search.choices is not None
        else f"range [{_num(search.low or 0)}, {_num(search.high or 0)}]"
    )
    rel = "; ".join(str(r) for r in relations)
    return f"no value of the {rng} satisfies {rel} (with {where})"


def random_suggest(rng: random.Random, end: str | None = None) -> Suggest:
    """A `Suggest` drawing uniformly with `rng` (log-uniformly on a log range, on the grid of
    a stepped one), or taking every range's `end` ('low' or 'high') when given."""

    def suggest(name: str, search: Search, kind: str) -> Any:
        if search.choices is not None:
            choices = list(search.choices)
            if end is not None:
                return choices[0] if end == "low" else choices[-1]
            return rng.choice(choices)
        assert search.low is not None and search.high is not None
        lo, hi = search.low, search.high
        if end is not None:
            v = lo if end == "low" else hi
        elif search.log:
            v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        elif search.step:
            v = lo + search.step * rng.randint(0, int((hi - lo) // search.step))
        else:
            v = rng.uniform(lo, hi)
        if kind == "int":
            return min(int(hi), max(int(lo), round(v))) if end is None else int(v)
        return float(min(hi, max(lo, v)))

    return suggest


def trial_suggest(trial: Any) -> Suggest:
    """A `Suggest` drawing from an Optuna trial (anything with `suggest_int`, `suggest_float`
    and `suggest_categorical`), so a sweep's define-by-run space is `sample_point`."""

    def suggest(name: str, search: Search, kind: str) -> Any:
        if search.choices is not None:
            return trial.suggest_categorical(name, list(search.choices))
        assert search.low is not None and search.high is not None
        if kind == "int":
            step = int(search.step) if search.step and not search.log else 1
            return trial.suggest_int(
                name, int(search.low), int(search.high), step=step, log=search.log
            )
        fstep = None if search.log else search.step
        return trial.suggest_float(name, search.low, search.high, step=fstep, log=search.log)

    return suggest
