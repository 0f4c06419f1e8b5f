"""The sweeps table.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*STATUSES, name="sweep_status", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("benchmark", sa.String(600), nullable=False),
        sa.Column("ray_job_id", sa.String(160), nullable=True),
        sa.Column("experiment_id", sa.String(64), nullable=True),
        sa.Column("parent_run_id", sa.String(64), nullable=True),
        sa.Column("submitted_by", sa.String(64), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_sweeps_seq", "sweeps", ["seq"], unique=True)
    op.create_index("ix_sweeps_name", "sweeps", ["name"])
    op.create_index("ix_sweeps_status", "sweeps", ["status"])


def downgrade() -> None:
    op.drop_table("sweeps")
