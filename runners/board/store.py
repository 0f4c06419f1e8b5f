"""Which MLflow store a read may use: the embedded default, and the checks that refuse a store a
read cannot use (a read never creates one)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from runners.board.reach import database_problem, server_problem
from runners.board.read import is_database_uri
from schemas.errors import FieldError
from schemas.home import Home, data_home
from schemas.secrets import masked

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def default_store() -> tuple[Path, str]:
    """(file, tracking URI) of the embedded default MLflow store: `mlflow.db` under
    `$BITSWEEP_HOME` (default `./bitsweep-data`), where a sweep writes it."""
    home = Home(data_home())
    return home.mlflow_db, home.tracking_uri


def check_read_store(uri: str, field_name: str = "tracking_uri") -> None:
    """Refuse, naming `field_name`, an MLflow store that a read cannot use: a file store
    (refused by MLflow 3), a SQLite file that does not exist (a read never creates a store),
    a server that does not answer its health check, a database that refuses a connection."""
    if uri.startswith(("http://", "https://")):
        problem = server_problem(uri)
        if problem is not None:
            raise FieldError(field_name, problem)
        return
    if uri.startswith("file:") or "://" not in uri:
        raise FieldError(field_name, "a file store is refused by MLflow 3; use sqlite:///PATH")
    if not is_database_uri(uri):
        raise FieldError(
            field_name, f"{masked(uri)!r} is neither a database URL nor an MLflow server"
        )
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except sqlalchemy.exc.ArgumentError:
        raise FieldError(field_name, f"{masked(uri)!r} is not a database URL") from None
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise FieldError(field_name, "an in-memory SQLite store holds no leaderboard")
        if not Path(url.database).expanduser().is_file():
            raise FieldError(field_name, f"{uri} does not exist (a read never creates a store)")
        return
    problem = database_problem(url)
    if problem is not None:
        raise FieldError(field_name, problem)


def client_of(store: str | MlflowClient) -> MlflowClient:
    """`store` itself when it is a client, else a client of the checked tracking URI."""
    if not isinstance(store, str):
        return store
    from mlflow.tracking import MlflowClient

    check_read_store(store)
    return MlflowClient(store)


__all__ = ["check_read_store", "client_of", "default_store"]
