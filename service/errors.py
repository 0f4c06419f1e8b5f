"""Turning refused inputs into one line that names the field and the reason."""

from __future__ import annotations

import pydantic

from schemas.errors import FieldError, validation_field


class InputRefused(FieldError):
    """Bad input refused by the command line or the API itself: `field: reason`."""


def input_error(e: BaseException) -> str | None:
    """`field: reason` for an exception caused by bad input, or None for any other error.

    Input errors are pydantic validation errors and `FieldError`s (every refusal of the
    project's own code is one).
    """
    if isinstance(e, pydantic.ValidationError):
        field, reason = validation_field(e)
        return f"{field}: {reason}"
    if isinstance(e, FieldError):
        return _one_line(f"{e.field}: {e.reason}")
    return None


def _one_line(s: str) -> str:
    return " ".join(s.split())
