"""The catalog's tables. Times are UTC, stored without a zone (SQLite keeps none; PostgreSQL
gets the same naive values, so both answer alike). Lists and maps of a run record are JSON.

A change here is a new Alembic revision in migrations/versions/ (and HEAD in store.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

STATS_COLUMNS = (
    "source",
    "operation",
    "started",
    "status",
    "duration_s",
    "ended",
    "bytes_read",
    "bytes_stored",
    "bytes_restored",
)


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    """One run record (service.runs.RunRecord), as it reached an observer or the audit chain."""

    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    operation: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(255))
    repository: Mapped[str | None] = mapped_column(Text)
    started: Mapped[dt.datetime] = mapped_column(DateTime())
    ended: Mapped[dt.datetime] = mapped_column(DateTime())
    duration_s: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    bytes_read: Mapped[int] = mapped_column(BigInteger)
    bytes_stored: Mapped[int] = mapped_column(BigInteger)
    bytes_restored: Mapped[int] = mapped_column(BigInteger)
    snapshots: Mapped[list[str]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    user: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    shell: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    destination: Mapped[str | None] = mapped_column(Text)
    data_classification: Mapped[str | None] = mapped_column(String(64))
    encryption: Mapped[str | None] = mapped_column(String(128))
    retention_policy: Mapped[str | None] = mapped_column(Text)
    compliance_flags: Mapped[list[str]] = mapped_column(JSON)
    recovery_point: Mapped[str | None] = mapped_column(Text)
    justification: Mapped[str | None] = mapped_column(Text)
    approver: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        # `runs`, newest first (run_id breaks ties in the same order every time).
        Index("ix_runs_started", "started", "run_id"),
        # Everything `stats` reads, from the index alone: the per source and operation
        # aggregate over a period, each group's p95 (its period's durations), the successful
        # backups behind the RPO share; and `runs --source S --operation OP`.
        Index("ix_runs_source_operation_started", *STATS_COLUMNS),
        # `runs --failed`.
        Index("ix_runs_status_started", "status", "started"),
        # `stats`' drills (of every source at once), `runs --operation OP`.
        Index("ix_runs_operation_started", "operation", "started"),
    )


class ChainHead(Base):
    """How far the catalog has read each audit chain of a repository: catch-up reads only
    the records past it."""

    __tablename__ = "chain_heads"

    repository_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    mac: Mapped[str] = mapped_column(String(128))


# -- alerts (catalog/alerts.py) ----------------------------------------------------------------


class AlertStateRow(Base):
    """A firing alert between evaluations (monitoring.alerts.AlertState); resolved ones are
    deleted, their story stays in alert_history."""

    __tablename__ = "alert_states"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    started: Mapped[dt.datetime] = mapped_column(DateTime())
    source: Mapped[str | None] = mapped_column(String(255))
    repository: Mapped[str | None] = mapped_column(String(255))
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    last_sent: Mapped[dt.datetime | None] = mapped_column(DateTime())
    sent_severity: Mapped[str | None] = mapped_column(String(16))
    silenced_by: Mapped[str | None] = mapped_column(String(32))


class AlertSilenceRow(Base):
    """A silence: alerts of `rule` (about `source`, or anything) not sent until `until`."""

    __tablename__ = "alert_silences"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(255))
    created: Mapped[dt.datetime] = mapped_column(DateTime())
    until: Mapped[dt.datetime] = mapped_column(DateTime())
    reason: Mapped[str] = mapped_column(Text)
    user: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    run_id: Mapped[str | None] = mapped_column(String(64))
    # Lifted before `until` (`alerts unsilence`): when and by whom.
    ended: Mapped[dt.datetime | None] = mapped_column(DateTime())
    ended_by: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (Index("ix_alert_silences_until", "until"),)


class AlertHistoryRow(Base):
    """One transition of an alert: fired, severity_changed, silenced, unsilenced, resolved."""

    __tablename__ = "alert_history"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime())
    key: Mapped[str] = mapped_column(String(512))
    rule: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    transition: Mapped[str] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(255))
    repository: Mapped[str | None] = mapped_column(String(255))
    silence_id: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        Index("ix_alert_history_at", "at", "id"),
        Index("ix_alert_history_key_at", "key", "at"),
    )
