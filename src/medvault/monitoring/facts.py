"""Observations: one reading of everything alerts and metrics judge, gathered by
`service/observe.py` from the catalog (run history), the repositories and the sources.

Times are aware UTC datetimes; sizes are bytes; None means "not known" (never backed up, no
WAL archiving, a store without a capacity), which a rule treats differently from zero.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobFacts:
    """One (source, operation) pair's history in the catalog; source None for
    repository-wide operations (check, prune, copy of a whole repository)."""

    source: str | None
    operation: str  # a RunRecord operation: backup, check, drill, prune, copy, wal-push, …
    last_status: str | None  # ok / failed / incomplete / refused
    last_ended: dt.datetime | None
    last_error: str | None
    last_success: dt.datetime | None
    consecutive_failures: int  # failed or incomplete runs since the last ok one
    last_duration_s: float | None


@dataclass(frozen=True)
class RunningJob:
    """A run under way: serve's own jobs, and runs other hosts or shells hold locks for."""

    source: str | None
    operation: str
    started: dt.datetime
    run_id: str | None = None


@dataclass(frozen=True)
class SourceFacts:
    source: str
    kind: str  # files / postgres
    repository: str  # the [repository.NAME] it backs up to
    tier: str | None
    rpo_s: float | None
    rto_s: float | None
    last_backup: dt.datetime | None  # the newest snapshot's time
    # The newest successful backup's size (bytes read from the source) and the sizes of the
    # (up to) seven successful backups before it, newest first: "smaller than min_size" and
    # "off the moving average" judge these.
    last_backup_bytes: int | None
    previous_backup_bytes: tuple[int, ...]
    backup_bytes_by_kind: dict[str, int] = field(default_factory=dict)  # kind -> last size
    min_size: int | None = None  # [source.X] min_size, in bytes
    # PostgreSQL with WAL archiving: now minus the time of the newest archived segment, and
    # whether the server's archiver reports failures newer than its last success.
    wal_lag_s: float | None = None
    archiver_failing: bool = False
    archiver_error: str | None = None  # the archiver's last failure (segment and time)
    server_error: str | None = None  # the server could not be asked (first line)
    last_drill: dt.datetime | None = None
    last_drill_ok: bool | None = None
    last_drill_rto_s: float | None = None


@dataclass(frozen=True)
class RepositoryFacts:
    name: str  # the [repository.NAME], or the URL when there is no config
    url: str
    opened: bool  # False: unreachable, or its key cannot be opened (error says which)
    error: str | None
    stored_bytes: int | None
    capacity_bytes: int | None  # local: the file system's size; S3: `quota`; None: unknown
    used_ratio: float | None  # local: the file system's use; S3: stored / quota
    key_created: dt.datetime | None  # the oldest key slot still in use
    clock_skew_s: float | None  # how far a record's time lies ahead of ours, beyond tolerance
    last_check: JobFacts | None


@dataclass(frozen=True)
class Observations:
    taken: dt.datetime
    sources: tuple[SourceFacts, ...]
    repositories: tuple[RepositoryFacts, ...]
    jobs: tuple[JobFacts, ...]
    running: tuple[RunningJob, ...]
    problems: tuple[str, ...] = ()  # what could not be gathered (the catalog, a source)
