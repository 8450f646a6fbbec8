"""alert_states, alert_silences and alert_history

Revision ID: 0002
Revises: 0001
Create Date: 2026-03-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_states",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("started", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(255), nullable=True),
        sa.Column("repository", sa.String(255), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("last_sent", sa.DateTime(), nullable=True),
        sa.Column("sent_severity", sa.String(16), nullable=True),
        sa.Column("silenced_by", sa.String(32), nullable=True),
    )
    op.create_table(
        "alert_silences",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("source", sa.String(255), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("ended", sa.DateTime(), nullable=True),
        sa.Column("ended_by", sa.String(255), nullable=True),
    )
    op.create_index("ix_alert_silences_until", "alert_silences", ["until"])
    op.create_table(
        "alert_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("transition", sa.String(32), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("source", sa.String(255), nullable=True),
        sa.Column("repository", sa.String(255), nullable=True),
        sa.Column("silence_id", sa.String(32), nullable=True),
    )
    op.create_index("ix_alert_history_at", "alert_history", ["at", "id"])
    op.create_index("ix_alert_history_key_at", "alert_history", ["key", "at"])


def downgrade() -> None:
    op.drop_index("ix_alert_history_key_at", table_name="alert_history")
    op.drop_index("ix_alert_history_at", table_name="alert_history")
    op.drop_table("alert_history")
    op.drop_index("ix_alert_silences_until", table_name="alert_silences")
    op.drop_table("alert_silences")
    op.drop_table("alert_states")
