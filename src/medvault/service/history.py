"""Run history from the catalog: `runs` (the records, newest first) and `stats` (per source
and operation: success rate, durations, bytes; per source: the share of the period within its
tier's RPO, and drills within RTO).

These read the host's catalog, after moving the runs this host has spooled into it and
catching it up from the audit chains of the session's repositories (service/catchup.py;
skipped with `catch_up=False`). They read no patient data, so they are not runs of their own:
a history that listed its own readings would bury what it exists to show.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.durations import parse_duration
from medvault.errors import UsageError
from medvault.service.recording import catalog_url, ingest_spool
from medvault.service.runs import RunRecord

if TYPE_CHECKING:
    from medvault.catalog.store import Catalog
    from medvault.service.session import Session

DEFAULT_LIMIT = 50
MAX_DAYS = 36600


def open_catalog(session: Session, *, catch_up: bool = False) -> Catalog:
    """The session's catalog, brought to the newest schema and caught up with the runs this
    host has spooled since it was last opened; with `catch_up`, also with the audit records
    of the session's repositories past the heads it has read."""
    from medvault.catalog.store import Catalog

    url = catalog_url(session)
    if url is None:
        raise UsageError(
            "no catalog: set [catalog] url in medvault.toml, or MEDVAULT_STATE_DIR for the "
            "SQLite catalog"
        )
    catalog = Catalog.open(url)
    try:
        caught_up = ingest_spool(catalog, session.state_dir)
    except BaseException:
        catalog.close()
        raise
    if caught_up.unreadable:
        session.notes.append(
            f"{len(caught_up.unreadable)} spooled run record(s) could not be read and were "
            f"set aside as *.bad in {session.state_dir}/spool (first: {caught_up.unreadable[0]})"
        )
    if catch_up:
        from medvault.service.catchup import catch_up as from_repositories

        try:
            from_repositories(session, catalog)
        except BaseException:
            catalog.close()
            raise
    return catalog


# -- runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunsOptions:
    source: str | None = None
    operation: str | None = None
    failed: bool = False  # only runs that did not end ok (failed, incomplete, refused)
    since: dt.datetime | None = None  # runs started at or after
    limit: int = DEFAULT_LIMIT
    # Read the session's repositories' audit chains past what the catalog holds first.
    catch_up: bool = True


@dataclass(frozen=True)
class RunsResult:
    runs: tuple[RunRecord, ...]  # newest first
    catalog: str  # its URL, the password hidden


def runs(session: Session, options: RunsOptions) -> RunsResult:
    if options.limit < 1:
        raise UsageError("--limit must be at least 1")
    with open_catalog(session, catch_up=options.catch_up) as catalog:
        found = catalog.runs(
            source=options.source,
            operation=options.operation,
            failed=options.failed,
            since=options.since,
            limit=options.limit,
        )
        return RunsResult(tuple(RunRecord(**record) for record in found), catalog.url)


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """`--since`: a date or time (ISO 8601; UTC unless it names a zone), or a duration back
    from now ("36h", "7d")."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            return now - parse_duration(text)
        except (ValueError, OverflowError):
            raise UsageError(
                f"--since {text!r}: give a date (2026-03-01), a time (2026-03-01T02:00) or a "
                "duration back from now (36h, 7d)"
            ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


# -- stats ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsOptions:
    days: int = 30
    until: dt.datetime | None = None  # the end of the period; now when None
    catch_up: bool = True  # as RunsOptions.catch_up


@dataclass(frozen=True)
class OperationStats:
    source: str | None
    operation: str
    runs: int
    succeeded: int  # status ok
    success_rate: float  # succeeded / runs
    mean_duration_s: float  # over all its runs
    p95_duration_s: float  # nearest rank: the ceil(0.95 n)-th shortest of n
    bytes_read: int
    bytes_stored: int
    bytes_restored: int


@dataclass(frozen=True)
class SourceStats:
    source: str | None
    tier: str | None
    rpo: str | None  # the tier's, as configured
    # The share of the period in which a successful backup no older than the RPO existed
    # (None: no RPO configured for the source).
    within_rpo: float | None
    drills: int
    drills_passed: int
    drills_within_rto: int  # passed and within the tier's RTO


@dataclass(frozen=True)
class StatsResult:
    since: dt.datetime
    until: dt.datetime
    operations: tuple[OperationStats, ...]
    sources: tuple[SourceStats, ...]
    catalog: str


def stats(session: Session, options: StatsOptions) -> StatsResult:
    if not 1 <= options.days <= MAX_DAYS:
        raise UsageError(f"--days must be between 1 and {MAX_DAYS}")
    until = options.until or dt.datetime.now(dt.UTC)
    since = until - dt.timedelta(days=options.days)
    rpos = _configured_rpos(session)
    from medvault.catalog.store import DrillCounts

    with open_catalog(session, catch_up=options.catch_up) as catalog:
        totals = catalog.operation_totals(since, until)
        operations = tuple(
            OperationStats(
                source=t.source,
                operation=t.operation,
                runs=t.runs,
                succeeded=t.succeeded,
                success_rate=t.succeeded / t.runs,
                mean_duration_s=t.mean_duration_s,
                p95_duration_s=t.p95_duration_s,
                bytes_read=t.bytes_read,
                bytes_stored=t.bytes_stored,
                bytes_restored=t.bytes_restored,
            )
            for t in totals
        )
        drills = catalog.drill_counts(since, until)
        sources = []
        for source in sorted(set(rpos) | set(drills), key=lambda s: (s is None, s or "")):
            tier, rpo = rpos.get(source, (None, None)) if source is not None else (None, None)
            within = None
            if rpo is not None and source is not None:
                period = parse_duration(rpo)
                within = catalog.within_rpo(source, period, since, until)
            counted = drills.get(source, DrillCounts(0, 0, 0))
            sources.append(
                SourceStats(
                    source=source,
                    tier=tier,
                    rpo=rpo,
                    within_rpo=within,
                    drills=counted.drills,
                    drills_passed=counted.passed,
                    drills_within_rto=counted.within_rto,
                )
            )
        return StatsResult(since, until, operations, tuple(sources), catalog.url)


def _configured_rpos(session: Session) -> dict[str, tuple[str | None, str | None]]:
    """source -> (tier, rpo) for each configured source whose tier has an RPO."""
    if not session.configured:
        return {}
    settings = session.settings
    found: dict[str, tuple[str | None, str | None]] = {}
    for name, section in settings.source.items():
        if section.tier is not None and settings.tier[section.tier].rpo is not None:
            found[name] = (section.tier, settings.tier[section.tier].rpo)
    return found
