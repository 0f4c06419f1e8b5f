"""Turning refused inputs into one line that names the field and the reason."""

from __future__ import annotations

from typing import Any

import pydantic

from schemas.errors import FieldError, validation_field


class InputRefused(FieldError):
    """Bad input refused by the command line or the API itself: `field: reason`."""


class ServiceUnreachable(ConnectionError):
    """No answer from the service at `url`: `reason` says what the connection met."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"no answer from {url} ({reason})")
        self.url = url
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.reason))


def input_error(e: BaseException) -> str | None:
    """`field: reason` for an exception caused by bad input, or None for any other error.

    Input errors are pydantic validation errors, `FieldError`s (every refusal of the
    project's own code is one) and a service that does not answer (the `--server` given).
    """
    if isinstance(e, pydantic.ValidationError):
        field, reason = validation_field(e, model=_model_named(e.title))
        return _one_line(f"{field}: {reason}")
    if isinstance(e, FieldError):
        return _one_line(f"{e.field}: {e.reason}")
    if isinstance(e, ServiceUnreachable):
        return _one_line(f"--server: {e}")
    return None


def _model_named(title: str) -> type[pydantic.BaseModel] | None:
    """The model a user writes (a sweep spec, a trial config) by its name, for the "did you
    mean" of an unknown field."""
    from schemas.sweep import SweepSpec
    from schemas.trial import TrialConfig

    models: dict[str, type[pydantic.BaseModel]] = {
        "SweepSpec": SweepSpec,
        "TrialConfig": TrialConfig,
    }
    return models.get(title)


def _one_line(s: str) -> str:
    return " ".join(s.split())
