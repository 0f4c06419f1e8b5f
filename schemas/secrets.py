"""Credentials out of everything bitsweep shows: one helper for every answer, log line,
artifact and command output that names a store.

A store URI may hold a password in its userinfo (`postgresql://user:pass@host/db`,
`http://user:pass@mlflow:5000`); `masked` replaces it with `***`, whatever the scheme.
`scrubbed` replaces the passwords of given URIs wherever they appear in a text (an error
message from a driver that quotes its URL).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"


def password_of(uri: str) -> str | None:
    """The password in `uri`'s userinfo, as written and unquoted; None when it has none."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    userinfo, at, _ = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1] or None


def masked(uri: str) -> str:
    """`uri` with the password of its userinfo replaced by `***` (any scheme); as it is when
    it holds none."""
    password = password_of(uri)
    if password is None:
        return uri
    parts = urlsplit(uri)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def scrubbed(text: str, uris: Iterable[str | None]) -> str:
    """`text` with every password of `uris` (as written, and unquoted) replaced by `***`."""
    for uri in uris:
        password = password_of(uri or "")
        if password:
            for form in {password, unquote(password)}:
                if len(form) >= 3:
                    text = text.replace(form, MASK)
    return text


__all__ = ["MASK", "masked", "password_of", "scrubbed"]
