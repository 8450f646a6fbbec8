"""runs and chain_heads

Revision ID: 0001
Revises:
Create Date: 2026-03-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("operation", sa.String(64), nullable=False),
        sa.Column("source", sa.String(255), nullable=True),
        sa.Column("repository", sa.Text(), nullable=True),
        sa.Column("started", sa.DateTime(), nullable=False),
        sa.Column("ended", sa.DateTime(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("bytes_read", sa.BigInteger(), nullable=False),
        sa.Column("bytes_stored", sa.BigInteger(), nullable=False),
        sa.Column("bytes_restored", sa.BigInteger(), nullable=False),
        sa.Column("snapshots", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("shell", sa.String(32), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("destination", sa.Text(), nullable=True),
        sa.Column("data_classification", sa.String(64), nullable=True),
        sa.Column("encryption", sa.String(128), nullable=True),
        sa.Column("retention_policy", sa.Text(), nullable=True),
        sa.Column("compliance_flags", sa.JSON(), nullable=False),
        sa.Column("recovery_point", sa.Text(), nullable=True),
        sa.Column("justification", sa.Text(), nullable=True),
        sa.Column("approver", sa.String(255), nullable=True),
    )
    op.create_index(
        "ix_runs_started",
        "runs",
        [
            "started",
            "source",
            "operation",
            "status",
            "duration_s",
            "bytes_read",
            "bytes_stored",
            "bytes_restored",
        ],
    )
    op.create_index(
        "ix_runs_source_operation_started",
        "runs",
        ["source", "operation", "started", "status", "ended"],
    )
    op.create_index("ix_runs_status_started", "runs", ["status", "started"])
    op.create_table(
        "chain_heads",
        sa.Column("repository_id", sa.String(64), primary_key=True),
        sa.Column("chain", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("mac", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("chain_heads")
    op.drop_index("ix_runs_status_started", table_name="runs")
    op.drop_index("ix_runs_source_operation_started", table_name="runs")
    op.drop_index("ix_runs_started", table_name="runs")
    op.drop_table("runs")
