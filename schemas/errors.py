"""The one error of a refused input, and how a pydantic failure becomes one.

Every refusal in bitsweep (a spec, a trial config, a dataset path, a strategy's params, an
API request) is a `FieldError`: the field that is wrong and why. It survives pickling, so an
error raised inside a Ray worker reaches the driver, MLflow and the terminal intact.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError


class FieldError(ValueError):
    """A refused input: `field` names the culprit (dotted, as the user wrote it), `reason` why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle their `args` (here the joined message); rebuild from the two parts.
        return (type(self), (self.field, self.reason))

    def at(self, prefix: str) -> FieldError:
        """The same error with its field under `prefix` (e.g. `strategies.0`)."""
        return type(self)(f"{prefix}.{self.field}" if prefix else self.field, self.reason)


def located_error(
    model: str, field: tuple[str | int, ...], message: str, value: Any
) -> ValidationError:
    """A validation error at `field` for a model-level check (a model validator's own errors
    would name only the model), to raise from inside a validator."""
    from pydantic_core import InitErrorDetails, PydanticCustomError

    return ValidationError.from_exception_data(
        model,
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{message}", {"message": message}),
                loc=field,
                input=value,
            )
        ],
    )


def validation_field(
    e: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> tuple[str, str]:
    """(field, reason) of the first error of a pydantic validation failure.

    `field` is the dotted location, under `prefix` when given; the reason drops pydantic's
    "Value error, " prefix, which says nothing to a user. With `model`, the model validated,
    an unknown field gets a "did you mean" from the fields where it was written, and a string
    where an object belongs an example of the object.
    """
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or e.title)
    reason = str(err["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        if reason.startswith(noise):
            reason = reason[len(noise) :]
    if err["type"] == "extra_forbidden":
        reason = "is not a field"
        known = _fields_at(model, err["loc"][:-1]) if model is not None else []
        name = err["loc"][-1] if err["loc"] else ""
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        if close:
            reason += f"; did you mean {close[0]}?"
    elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        # pydantic names the class ("a valid dictionary or instance of StrategySpec").
        known = _fields_at(model, err["loc"]) if model is not None else []
        value = err.get("input")
        if "name" in known and isinstance(value, str) and _PLAIN.fullmatch(value):
            reason = f"must be an object such as {{name: {value}}}"
        else:
            reason = "must be an object (a mapping of fields)"
    return field, " ".join(reason.split())


_PLAIN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The field names of the model found at `loc` under `model` (through lists, dicts and
    optional fields), or [] where no model is found."""
    found: Any = model
    for part in loc:
        found = _step(found, part)
        if found is None:
            return []
    for t in _alternatives(found):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return [f.alias or name for name, f in t.model_fields.items()]
    return []


def _step(tp: Any, part: str | int) -> Any:
    for t in _alternatives(tp):
        origin = typing.get_origin(t)
        args = typing.get_args(t)
        if isinstance(part, int) and origin in (list, tuple, set, frozenset) and args:
            return args[0]
        if isinstance(part, str):
            if isinstance(t, type) and issubclass(t, BaseModel):
                for name, f in t.model_fields.items():
                    if part in (name, f.alias):
                        return f.annotation
            if origin is dict and len(args) == 2:
                return args[1]
    return None


def _alternatives(tp: Any) -> list[Any]:
    """`tp` without `Annotated`, each member of a union."""
    if typing.get_origin(tp) is typing.Annotated:
        return _alternatives(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(tp) for a in _alternatives(arg)]
    return [tp]


def field_error(e: ValidationError, prefix: str = "") -> FieldError:
    """The first error of a pydantic validation failure as a `FieldError`."""
    return FieldError(*validation_field(e, prefix))
