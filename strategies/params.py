"""A strategy's hyperparameters: the `StrategyParams` base, `Search` ranges and `Relation`s.

Bounds, search ranges and cross-field constraints are written once, on the `Params` model:
pydantic validates them, and a sweep's search reads the same declarations (`strategies.space`).
Imports pydantic only (and the error helpers of `schemas`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from schemas.errors import located_error


@dataclass(frozen=True)
class Search:
    """How a sweep may search a field: a numeric range (`low`, `high`, `log`, `step`) or `choices`.

    Attach it to a field of a strategy's `Params` with `Annotated[int, Field(ge=1), Search(2, 8)]`.
    The range must lie inside the field's bounds (checked at registration); a sweep spec may
    narrow or move it, never beyond the bounds.
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("Search needs low and high, or choices")
        if self.choices is None and self.low is not None and self.high is not None:
            if self.low > self.high:
                raise ValueError("Search low must not exceed high")
            if self.log and self.low <= 0:
                raise ValueError("a log-scale Search needs low > 0")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: `{"choices": [...]}` or `{"low", "high", "log", "step"}` as numbers."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class Relation:
    """A constraint between two numeric fields: `left <op> right + offset`.

    Declare them on a `Params` as `relations = (Relation("trainable_msbs", "<=", "bits", -1),)`.
    Validation refuses a combination that breaks one (the error names `left`), and a sweep's
    search narrows each field's range by the fields sampled or fixed before it, so no sampled
    trial breaks one.
    """

    left: str
    op: Literal["<=", ">=", "<", ">"]
    right: str
    offset: float = 0

    def holds(self, left: float, right: float) -> bool:
        return bool(_OPS[self.op](left, right + self.offset))

    def __str__(self) -> str:
        off = "" if self.offset == 0 else f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}"
        return f"{self.left} {self.op} {self.right}{off}"

    def bound_for(self, field: str, other: float) -> tuple[str, float]:
        """The bound this relation puts on `field` when the other field's value is `other`:
        ('<=' | '>=' | '<' | '>', value)."""
        if field == self.left:
            return self.op, other + self.offset
        flipped = {"<=": ">=", ">=": "<=", "<": ">", ">": "<"}[self.op]
        return flipped, other - self.offset


class StrategyParams(BaseModel):
    """Base of every strategy's `Params`: immutable, unknown fields refused, `relations` checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    relations: ClassVar[tuple[Relation, ...]] = ()

    @model_validator(mode="after")
    def _relations_hold(self) -> StrategyParams:
        for r in type(self).relations:
            left, right = getattr(self, r.left), getattr(self, r.right)
            if left is None or right is None or r.holds(left, right):
                continue
            raise located_error(
                type(self).__name__,
                (r.left,),
                f"{left} breaks {r} ({r.right} = {right})",
                left,
            )
        return self
