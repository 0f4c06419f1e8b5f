"""The service's database: Alembic's migrations give the ORM's schema on SQLite and
PostgreSQL, and the app runs on PostgreSQL with timezone-aware timestamps.

PostgreSQL (127.0.0.1:5432) is part of the test environment: these tests use it, never skip.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from service.db import (
    Base,
    Status,
    SweepRow,
    alembic_config,
    engine_for,
    migrate,
    sessions,
    utcnow,
)
from service.http.app import create_app
from service.settings import load_settings

SPEC = {"name": "db", "strategies": [{"name": "full_precision"}], "epochs": 1}
# A session time zone far from UTC, as a PostgreSQL server set to local time gives.
FAR_ZONE = "?options=-c%20timezone%3DAsia/Kolkata"


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def schema_diff(engine: Engine, metadata: sa.MetaData = Base.metadata) -> list[Any]:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def versions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each dialect."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        yield request.getfixturevalue("pg_database")("svc")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The home of the MLflow and Optuna stores every app of this module shares."""
    return tmp_path_factory.mktemp("stores") / "home"


@contextlib.contextmanager
def serve(stores: Path, database_url: str) -> Iterator[TestClient]:
    app = create_app(load_settings(home=str(stores), database_url=database_url), run_jobs=False)
    with TestClient(app) as c:
        yield c


# -- migrations ------------------------------------------------------------------------------


def test_migrations_from_empty_give_the_orm_schema(empty_db: str) -> None:
    engine = engine_for(empty_db)
    try:
        assert sa.inspect(engine).get_table_names() == []
        migrate(engine)
        assert set(sa.inspect(engine).get_table_names()) == {"sweeps", "alembic_version"}
        assert schema_diff(engine) == []
        assert versions(engine) == [head_revision()]
    finally:
        engine.dispose()


def test_the_comparison_sees_a_schema_that_drifted(empty_db: str) -> None:
    """The check above can fail: a model with one more column or index differs."""
    engine = engine_for(empty_db)
    try:
        migrate(engine)
        drifted = sa.MetaData()
        table = Base.metadata.tables["sweeps"].to_metadata(drifted)
        table.append_column(sa.Column("extra", sa.Integer, nullable=True))
        sa.Index("ix_sweeps_benchmark", table.c.benchmark)
        diff = schema_diff(engine, drifted)
        kinds = {d[0] for d in diff}
        assert {"add_column", "add_index"} <= kinds, diff
    finally:
        engine.dispose()


def test_migrating_twice_is_a_no_op(empty_db: str) -> None:
    engine = engine_for(empty_db)
    try:
        migrate(engine)
        with sessions(engine)() as s, s.begin():
            s.add(
                SweepRow(
                    id="kept",
                    seq=1,
                    name="kept",
                    spec=dict(SPEC),
                    status=Status.queued,
                    benchmark="bitsweep/digits/mlp",
                    submitted_by="alice",
                    cancel_requested=False,
                )
            )
        migrate(engine)
        assert schema_diff(engine) == []
        assert versions(engine) == [head_revision()]
        with sessions(engine)() as s:
            row = s.get(SweepRow, "kept")
        assert row is not None and row.spec == SPEC and row.status == Status.queued
        assert row.cancel_requested is False
    finally:
        engine.dispose()


# -- the app on PostgreSQL -------------------------------------------------------------------


def test_the_app_runs_on_postgresql(pg_database: Callable[[str], str], stores: Path) -> None:
    url = pg_database("svc")
    with serve(stores, url) as c:
        assert c.get("/health").json()["database"] == "postgresql"
        ids = []
        for name in ("first", "second"):
            r = c.post("/sweeps", json={**SPEC, "name": name})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        page = c.get("/sweeps").json()
        assert page["total"] == 2 and [v["id"] for v in page["items"]] == ids[::-1]
        r = c.post(f"/sweeps/{ids[0]}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert c.post(f"/sweeps/{ids[0]}/cancel").status_code == 409
        queued = c.get("/sweeps", params={"status": "queued"}).json()
        assert [v["id"] for v in queued["items"]] == [ids[1]]
        assert c.get(f"/sweeps/{ids[1]}").json()["spec"]["name"] == "second"
        health = c.get("/health").json()["sweeps"]
        assert health["queued"] == 1 and health["cancelled"] == 1

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT id, name, status, submitted_by, cancel_requested, spec, finished_at "
                    "FROM sweeps ORDER BY seq"
                )
            ).all()
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    assert [(r.id, r.name, r.status, r.submitted_by) for r in rows] == [
        (ids[0], "first", "cancelled", "anonymous"),
        (ids[1], "second", "queued", "anonymous"),
    ]
    assert [r.cancel_requested for r in rows] == [True, False]
    assert rows[0].finished_at is not None and rows[1].finished_at is None
    assert rows[1].spec["name"] == "second" and rows[1].spec["tracking_uri"]
    assert version == head_revision()


# -- timestamps ------------------------------------------------------------------------------


def assert_utc(value: dt.datetime | str | None) -> None:
    assert value is not None
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    assert when.tzinfo is not None, when
    assert when.utcoffset() == dt.timedelta(0), when


def test_timestamps_come_back_aware_in_utc(empty_db: str, stores: Path) -> None:
    with serve(stores, empty_db) as c:
        sid = c.post("/sweeps", json=SPEC).json()["id"]
        cancelled = c.post(f"/sweeps/{sid}/cancel").json()
        detail = c.get(f"/sweeps/{sid}").json()
        listed = c.get("/sweeps").json()["items"][0]
    for view in (cancelled, detail, listed):
        assert_utc(view["created_at"])
        assert_utc(view["finished_at"])
    created = dt.datetime.fromisoformat(detail["created_at"])
    assert abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(minutes=5)

    engine = engine_for(empty_db)
    try:
        with sessions(engine)() as s:
            row = s.get(SweepRow, sid)
        assert row is not None
        assert_utc(row.created_at)
        assert_utc(row.finished_at)
        assert row.started_at is None
    finally:
        engine.dispose()


def test_timestamps_are_utc_whatever_the_postgresql_session_zone(
    pg_database: Callable[[str], str], stores: Path
) -> None:
    url = pg_database("svc") + FAR_ZONE
    before = utcnow()
    with serve(stores, url) as c:
        sid = c.post("/sweeps", json=SPEC).json()["id"]
        detail = c.get(f"/sweeps/{sid}").json()
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            zone = conn.execute(sa.text("SHOW timezone")).scalar()
        with sessions(engine)() as s:
            row = s.get(SweepRow, sid)
    finally:
        engine.dispose()
    assert zone == "Asia/Kolkata"  # the session is where this test means it to be
    assert row is not None
    assert abs(row.created_at - before) < dt.timedelta(minutes=5)  # the same instant
    assert_utc(row.created_at)
    assert_utc(detail["created_at"])


def test_sqlite_file_names_the_file_of_a_sqlite_url_only():
    from pathlib import Path

    from service.db import sqlite_file

    assert sqlite_file("sqlite:////srv/bitsweep/service.db") == Path("/srv/bitsweep/service.db")
    assert sqlite_file("sqlite:///rel/service.db") == Path("rel/service.db")
    for other in ("sqlite:///:memory:", "postgresql://u@h/db", "http://127.0.0.1:5000"):
        assert sqlite_file(other) is None
