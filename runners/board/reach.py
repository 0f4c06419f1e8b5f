"""Whether a store answers: an MLflow server's health check, a database connection. Each
returns why not (None when it answers), for the caller to raise against its own field; light
to import (no Ray, no torch), so that a read and a sweep's planning share it."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from schemas.secrets import masked, scrubbed


def reason(e: BaseException) -> str:
    """One line of at most 300 characters saying why `e` happened."""
    text = str(getattr(e, "orig", None) or getattr(e, "reason", None) or e)
    return " ".join(text.split())[:300]


def server_problem(uri: str) -> str | None:
    """Why the MLflow server at `uri` cannot be used (its `/health` does not answer 200)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
            if r.status != 200:
                return f"MLflow server at {masked(uri)} answered {r.status}"
    except (urllib.error.URLError, OSError) as e:
        return f"MLflow server at {masked(uri)} is unreachable ({scrubbed(reason(e), [uri])})"
    return None


def database_problem(url: Any) -> str | None:
    """Why a connection to the database at `url` (a SQLAlchemy URL) cannot be opened."""
    import sqlalchemy

    backend = url.get_backend_name()
    args = {"connect_timeout": 5} if backend in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=args)
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as e:
        return f"no driver for {backend} ({e.name})"
    except sqlalchemy.exc.SQLAlchemyError as e:
        return f"cannot connect to {url.render_as_string()} ({reason(e)})"
    return None
