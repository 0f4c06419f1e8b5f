"""How a refused input is described: the field that is wrong and why, on one line."""

from __future__ import annotations

from pydantic import ValidationError


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
