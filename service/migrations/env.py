"""Alembic's environment for the service's database: the connection `service.db.migrate`
hands over, or the URL of the config (for the `alembic` command)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service.db import Base

config = context.config
target = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
