"""Shared fixtures: a data directory per test, PostgreSQL databases, and a Ray cluster."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("BITSWEEP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh BITSWEEP_HOME (not created: commands must create it themselves)."""
    path = tmp_path / "bitsweep-data"
    monkeypatch.setenv("BITSWEEP_HOME", str(path))
    return path


def _admin():
    import sqlalchemy

    return sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def _pg_databases() -> Iterator[callable]:
    import sqlalchemy

    engine = _admin()
    created: list[str] = []

    def make(prefix: str) -> str:
        name = f"bitsweep_test_{prefix}_{uuid.uuid4().hex[:8]}"
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    try:
        yield make
    finally:
        with engine.connect() as conn:
            for name in created:
                conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture
def pg_database() -> Iterator[callable]:
    """A factory of throwaway PostgreSQL databases on 127.0.0.1; dropped after the test.

    PostgreSQL is part of the test environment (CI runs on a machine with it): a test that
    needs it fails, with the connection error, when it is absent.
    """
    with _pg_databases() as make:
        yield make


@pytest.fixture(scope="module")
def module_pg_database() -> Iterator[callable]:
    """`pg_database` for a module's fixtures: dropped after the module."""
    with _pg_databases() as make:
        yield make


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local one-node Ray cluster for the module's in-process sweeps."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
