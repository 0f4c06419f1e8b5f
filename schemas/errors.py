"""The one error of a refused input, and how a pydantic failure becomes one.

Every refusal in bitsweep (a spec, a trial config, a dataset path, a strategy's params, an
API request) is a `FieldError`: the field that is wrong and why. It survives pickling, so an
error raised inside a Ray worker reaches the driver, MLflow and the terminal intact.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


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


def validation_field(e: ValidationError, prefix: str = "") -> tuple[str, str]:
    """(field, reason) of the first error of a pydantic validation failure.

    `field` is the dotted location, under `prefix` when given; the reason drops pydantic's
    "Value error, " prefix, which says nothing to a user.
    """
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or e.title)
    reason = str(err["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        if reason.startswith(noise):
            reason = reason[len(noise) :]
    return field, " ".join(reason.split())


def field_error(e: ValidationError, prefix: str = "") -> FieldError:
    """The first error of a pydantic validation failure as a `FieldError`."""
    return FieldError(*validation_field(e, prefix))
