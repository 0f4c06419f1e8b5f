"""Turning refused inputs into one line that names the field and the reason."""

from __future__ import annotations

import pydantic

from schemas.errors import validation_field


class InputRefused(ValueError):
    """Bad input refused by the command line or the API itself: `field: reason`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def input_error(e: BaseException) -> str | None:
    """`field: reason` for an exception caused by bad input, or None for any other error.

    Input errors are pydantic validation errors and the project's errors that carry a
    `field` (ConfigError, DatasetError, ModelError, SpaceError, SpecError).
    """
    if isinstance(e, pydantic.ValidationError):
        field, reason = validation_field(e)
        return f"{field}: {reason}"
    name = getattr(e, "field", None)
    if isinstance(e, ValueError) and isinstance(name, str):
        why = getattr(e, "reason", None)
        text = f"{name}: {why}" if why else str(e)
        return _one_line(text if text.startswith(name) else f"{name}: {text}")
    return None


def _one_line(s: str) -> str:
    return " ".join(s.split())
