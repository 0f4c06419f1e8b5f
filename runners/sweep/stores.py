"""Where a sweep keeps its records, and the check that a store is reachable before anything runs.

The embedded default needs no server: SQLite files under the data directory, one for MLflow and
one for Optuna (both keep an `alembic_version` table, so they never share a database).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

from runners.board.reach import database_problem, reason, server_problem
from runners.sweep.space import SpecError
from schemas.home import Home
from schemas.secrets import masked, scrubbed


def default_uris(home: Path) -> tuple[str, str]:
    """(MLflow tracking URI, Optuna storage URL) of the embedded default under `home`."""
    return Home(home).tracking_uri, Home(home).optuna_uri


def check_store(field: str, uri: str, *, mlflow_store: bool) -> None:
    """Refuse a store that cannot be reached, naming `field`. Creates and writes nothing."""
    if uri.startswith(("http://", "https://")):
        if not mlflow_store:
            raise SpecError(
                field, "Optuna storage must be a database URL (sqlite, postgresql, mysql)"
            )
        problem = server_problem(uri)
        if problem is not None:
            raise SpecError(field, problem)
        return
    if uri.startswith("file:") or "://" not in uri:
        raise SpecError(field, "a file store is refused by MLflow 3; use sqlite:///PATH")
    try:
        url = make_url(uri)
    except sqlalchemy.exc.ArgumentError:
        raise SpecError(field, f"{masked(uri)!r} is not a database URL") from None
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise SpecError(field, "an in-memory SQLite store would be lost when the sweep ends")
        folder = Path(url.database).expanduser().resolve().parent
        existing = folder
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not _writable(existing):
            raise SpecError(field, f"cannot create the SQLite file under {folder}")
        return
    problem = database_problem(url)
    if problem is not None:
        raise SpecError(field, problem)


def check_storage_path(raw: str | None, home: Path) -> str:
    """The Ray Tune storage root: an absolute local folder that can be created, or a URI that
    pyarrow can open. Default `home/ray`. Creates nothing."""
    if raw is None:
        return str(Home(home).ray)
    if "://" in raw:
        import pyarrow.fs

        try:
            pyarrow.fs.FileSystem.from_uri(raw)
        except (pyarrow.lib.ArrowException, ValueError, OSError) as e:
            raise SpecError(
                "storage_path", f"cannot open {masked(raw)} ({scrubbed(reason(e), [raw])})"
            ) from None
        return raw.rstrip("/")
    path = Path(raw).expanduser().resolve()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not _writable(existing):
        raise SpecError("storage_path", f"cannot create a folder under {existing}")
    return str(path)


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK)
