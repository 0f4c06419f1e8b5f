"""The service's own database: one table of sweeps, with SQLAlchemy 2's typed ORM.

Its schema is Alembic's (`service/migrations`), applied by `migrate` when the service starts;
the ORM model here and the migrations are compared by tests/integration/test_service_db.py, so
that they cannot drift. It is separate from MLflow's and Optuna's databases: the service keeps
what it alone knows (who submitted what, the Ray job, the status) and reads results from MLflow.
"""

from __future__ import annotations

import datetime as dt
import enum
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


class Status(enum.StrEnum):
    """A sweep's status in the service. `queued` and `running` are live; the rest are final."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def final(self) -> bool:
        return self in (Status.succeeded, Status.failed, Status.cancelled)


LIVE = (Status.queued, Status.running)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(DateTime):
    """Timestamps stored in UTC; SQLite gives them back naive, which this makes aware."""

    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)


class Base(DeclarativeBase):
    pass


class SweepRow(Base):
    """One submitted sweep. `id` is the sweep's id everywhere: the MLflow tag
    `bitsweep.sweep_id`, the state file, the Ray job's submission id `bitsweep-<id>`."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Submission order, for the queue: timestamps can tie.
    seq: Mapped[int] = mapped_column(Integer, unique=True, index=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[Status] = mapped_column(
        Enum(Status, name="sweep_status", native_enum=False, length=16), index=True
    )
    benchmark: Mapped[str] = mapped_column(String(600))
    ray_job_id: Mapped[str | None] = mapped_column(String(160))
    experiment_id: Mapped[str | None] = mapped_column(String(64))
    parent_run_id: Mapped[str | None] = mapped_column(String(64))
    submitted_by: Mapped[str] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    cancelled_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


@event.listens_for(SweepRow, "load")
def _aware(row: SweepRow, _context: Any) -> None:
    for name in ("created_at", "started_at", "finished_at"):
        value = getattr(row, name)
        if value is not None and value.utcoffset() != dt.timedelta(0):
            aware = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
            setattr(row, name, aware.astimezone(dt.UTC))


def sqlite_file(url: str) -> Path | None:
    """The file of a `sqlite:///PATH` URL; None for any other store (and in-memory SQLite)."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def engine_for(url: str) -> Engine:
    """An engine for the service's database; SQLite files get their folder and a busy wait,
    since the API and the job follower write from two threads."""
    file = sqlite_file(url)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        return create_engine(url, connect_args={"timeout": 30})
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema (Alembic's `upgrade head`)."""
    from alembic import command

    with engine.begin() as conn:
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def sessions(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


__all__ = ["LIVE", "Base", "Status", "SweepRow", "engine_for", "migrate", "sessions", "utcnow"]
