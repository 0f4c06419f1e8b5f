"""Bounds and search ranges of a strategy's params, read from its `Params` model.

Validation and search space are written once, on the pydantic fields: a field's bounds come
from its `Field(ge=..., le=...)` constraints and its search range from a `Search` in its
`Annotated` metadata. Training knobs (`lr`, `optimizer`, ...) are searchable the same way.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from strategies.base import Search, StrategyParams


class TrainingKnobs(BaseModel):
    """Training settings a sweep may search beside a strategy's own params."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(128, ge=1, le=65_536)


TRAINING_KNOBS: frozenset[str] = frozenset(TrainingKnobs.model_fields)


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(strategy params, training knobs) of a flat params dict."""
    own = {k: v for k, v in params.items() if k not in TRAINING_KNOBS}
    knobs = {k: v for k, v in params.items() if k in TRAINING_KNOBS}
    return own, knobs


class SpaceError(ValueError):
    """A params dict or a search range that a strategy refuses. `field` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


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
            entry["bounds"] = [
                None if low is None else ("[" if lo_inc else "(") + _num(low),
                None if high is None else _num(high) + ("]" if hi_inc else ")"),
            ]
        ch = field_choices(info)
        if ch is not None:
            entry["choices"] = list(ch)
        if name in searches:
            s = searches[name]
            entry["search"] = (
                {"choices": list(s.choices)}
                if s.choices is not None
                else {"low": s.low, "high": s.high, "log": s.log, "step": s.step}
            )
        out.append(entry)
    return out


def bounds_text(info: FieldInfo) -> str:
    """A field's bounds in interval notation, e.g. `(0, 10]`."""
    low, high, lo_inc, hi_inc = field_bounds(info)
    left = "(-inf" if low is None else ("[" if lo_inc else "(") + _num(low)
    right = "inf)" if high is None else _num(high) + ("]" if hi_inc else ")")
    return f"{left}, {right}"


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
