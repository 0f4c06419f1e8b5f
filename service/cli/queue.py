"""`bitsweep queue list|fail`: the operator's view of the service's queue, read and written in
the service's own database (its settings, as `bitsweep serve` reads them), whether or not the
service runs.

`fail` ends a row that is stuck `queued` or `running` (a job nothing can follow, a sweep that
must not run) as `failed`, with the operator's reason, so that the queue moves on; a Ray job it
names is not stopped (`ray job stop`, or `bitsweep cancel` while the service runs, does that).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from schemas.names import SWEEP_ID
from service.errors import InputRefused

# The commands import SQLAlchemy and the service's settings inside their functions, to keep
# `bitsweep --help` fast.

app = typer.Typer(
    help="The service's queue, read and changed by its operator in the service's database.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

EnvFile = Annotated[Path | None, typer.Option(help="settings file of BITSWEEP_* variables")]


def _sessions(env_file: Path | None) -> tuple[Any, Any]:
    """The engine and sessions of the service's database, once it holds the queue (it is the
    service's to create and migrate: nothing here changes its schema)."""
    import sqlalchemy as sa

    from schemas.secrets import masked
    from service.db import engine_for, sessions
    from service.settings import load_settings

    settings = load_settings(str(env_file) if env_file is not None else None)
    if sqlite_missing(settings.database):
        raise InputRefused("BITSWEEP_DATABASE_URL", f"{settings.database} does not exist")
    engine = engine_for(settings.database)
    try:
        with engine.connect() as conn:
            held = sa.inspect(conn).has_table("sweeps")
    except sa.exc.SQLAlchemyError as e:
        engine.dispose()
        reason = str(e.orig if isinstance(e, sa.exc.DBAPIError) else e).splitlines()[0]
        raise InputRefused("BITSWEEP_DATABASE_URL", masked(reason)) from None
    if not held:
        engine.dispose()
        raise InputRefused(
            "BITSWEEP_DATABASE_URL",
            f"{masked(settings.database)} holds no queue: has `bitsweep serve` run with it?",
        )
    return engine, sessions(engine)


def sqlite_missing(url: str) -> bool:
    from service.db import sqlite_file

    file = sqlite_file(url)
    return file is not None and not file.is_file()


@app.command("list")
def list_rows(
    env_file: EnvFile = None,
    every: Annotated[bool, typer.Option("--all", help="finished sweeps too")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
) -> None:
    """The sweeps queued or running (with --all, every sweep), in submission order."""
    from sqlalchemy import select

    from service.db import LIVE, SweepRow

    engine, make = _sessions(env_file)
    try:
        query = select(SweepRow).order_by(SweepRow.seq)
        if not every:
            query = query.where(SweepRow.status.in_(LIVE))
        with make() as s:
            rows = list(s.scalars(query))
    finally:
        engine.dispose()
    if as_json:
        fields = ("id", "status", "ray_job_id", "submitted_by", "error")
        sys.stdout.write(json.dumps([{f: getattr(r, f) for f in fields} for r in rows]) + "\n")
        return
    table = Table("id", "status", "Ray job", "submitted by", "since", box=None)
    for r in rows:
        since = r.started_at or r.created_at
        table.add_row(r.id, r.status.value, r.ray_job_id or "", r.submitted_by, f"{since:%F %T}")
    out.print(table if rows else "no sweep is queued or running")


@app.command()
def fail(
    sweep_id: Annotated[str, typer.Argument(metavar="ID", help="the stuck sweep")],
    reason: Annotated[str, typer.Option(help="why, kept as the sweep's error")],
    env_file: EnvFile = None,
) -> None:
    """End a queued or running sweep as failed, with REASON, so that the queue moves on."""
    from service.db import LIVE, Status, SweepRow, utcnow

    if not re.fullmatch(SWEEP_ID, sweep_id):
        raise InputRefused("ID", f"{sweep_id!r} is not a sweep id")
    reason = " ".join(reason.split())
    if not reason or len(reason) > 500:
        raise InputRefused("--reason", "must say why, in 1 to 500 characters")
    engine, make = _sessions(env_file)
    try:
        with make() as s, s.begin():
            row = s.get(SweepRow, sweep_id, with_for_update=True)
            if row is None:
                raise InputRefused("ID", f"no sweep {sweep_id} in the service's database")
            if row.status not in LIVE:
                raise InputRefused("ID", f"sweep {sweep_id} has already ended ({row.status.value})")
            job = row.ray_job_id
            row.status = Status.failed
            row.error = f"failed by the operator: {reason}"
            row.finished_at = utcnow()
    finally:
        engine.dispose()
    out.print(f"{sweep_id}: failed", highlight=False)
    if job is not None:
        err.print(
            f"its Ray job {job} was not stopped; stop it with: ray job stop {job}", soft_wrap=True
        )
