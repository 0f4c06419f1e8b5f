"""Riding out a database restart: a sweep's MLflow and Optuna writes, retried with backoff.

A PostgreSQL server that restarts (a failover, an upgrade, a crash) drops every connection,
and for the seconds it is down each write fails. MLflow's SQLAlchemy store turns such a
failure into `MlflowException(TEMPORARILY_UNAVAILABLE)` and Optuna's RDB storage into
`StorageInternalError`; neither retries, so one lost write would end the sweep. The sweep's
MLflow client (`retrying_client`) and Optuna storage (`RetryingRDBStorage`) retry what fails
for a connection's reason, with exponential backoff, for up to `RETRY_SECONDS`; any other
error is raised at once. Both stores pre-ping pooled connections (MLflow's engine does, and
the Optuna storage is made with `pool_pre_ping`), so the first call after the restart gets a
fresh connection.

An MLflow tracking server has retries of its own (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`,
`MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`), which the sweep leaves as they are.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

import optuna
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_before_delay,
    wait_exponential,
)

from schemas.names import STORE_RETRY_ENV

log = logging.getLogger(__name__)

RETRY_ENV = STORE_RETRY_ENV
RETRY_SECONDS = float(os.environ.get(RETRY_ENV, "120"))
FIRST_WAIT_S = 0.5
MOST_WAIT_S = 10.0

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")

_CONNECTION_WORDS = (
    "connection refused",
    "could not connect",
    "server closed the connection",
    "terminating connection",
    "connection is closed",
    "connection reset",
    "the database system is starting up",
    "the database system is shutting down",
    "consuming input failed",
    "ssl connection has been closed",
)


def transient(e: BaseException) -> bool:
    """Whether `e` says the store could not be reached (worth retrying), not that the call
    was wrong."""
    import sqlalchemy.exc

    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, sqlalchemy.exc.DBAPIError) and cur.connection_invalidated:
            return True
        if isinstance(cur, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if getattr(cur, "error_code", None) == "TEMPORARILY_UNAVAILABLE":
            return True
        text = str(cur).lower()
        if any(w in text for w in _CONNECTION_WORDS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def retried(fn: F, what: str = "") -> F:
    """`fn`, retried on transient store errors with backoff (0.5 s doubling to 10 s) for up to
    `RETRY_SECONDS`; any other error is raised at once."""
    name = what or getattr(fn, "__name__", "a store call")

    def note(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s failed (%s); retry %d in %.1f s",
            name,
            str(error).splitlines()[0][:200] if error else "",
            state.attempt_number,
            state.upcoming_sleep,
        )

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return Retrying(
            retry=retry_if_exception(transient),
            wait=wait_exponential(multiplier=FIRST_WAIT_S, max=MOST_WAIT_S),
            # Gives up before a wait that would end past the deadline, not after it.
            stop=stop_before_delay(RETRY_SECONDS),
            before_sleep=note,
            reraise=True,
        )(fn, *args, **kwargs)

    return cast(F, call)


class RetryingClient:
    """An `MlflowClient` whose every call is `retried`."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if callable(value) and not name.startswith("_"):
            return retried(value, f"MLflow {name}")
        return value


def retrying(client: C) -> C:
    """`client` (an `MlflowClient`), its every call `retried`."""
    return cast(C, RetryingClient(client))


def retrying_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return retrying(retried(MlflowClient, "MLflow store")(uri))


def _retrying_storage_calls(
    cls: type[optuna.storages.RDBStorage],
) -> type[optuna.storages.RDBStorage]:
    """`cls` with each of Optuna's storage calls (the public methods of `BaseStorage`) that
    `RDBStorage` implements `retried`."""
    base = optuna.storages.BaseStorage
    for name in dir(base):
        method = getattr(optuna.storages.RDBStorage, name, None)
        if not name.startswith("_") and callable(getattr(base, name)) and method is not None:
            setattr(cls, name, retried(method, f"Optuna {name}"))
    return cls


@_retrying_storage_calls
class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, each storage call `retried`, its pooled connections pre-pinged."""

    def __init__(self, url: str, **kw: Any) -> None:
        engine_kwargs = {"pool_pre_ping": True, **kw.pop("engine_kwargs", {})}
        if url.startswith("sqlite"):
            engine_kwargs.pop("pool_pre_ping")
        retried(super().__init__, "Optuna storage")(url, engine_kwargs=engine_kwargs, **kw)


__all__ = [
    "RetryingClient",
    "RetryingRDBStorage",
    "retried",
    "retrying",
    "retrying_client",
    "transient",
]
