"""Observations: one reading of what metrics and alerts judge (monitoring/facts.py), from the
configured repositories, the sources' servers and the catalog.

Like `runs` and `stats` (service/history.py) this reads no patient data (snapshot records,
drill records, key slots and locks: metadata) and is not a run of its own: a reading taken
every scrape would bury the history it reads. Whatever cannot be read becomes a fact, never
an exception: a repository that cannot be opened is `opened=False` with its error's first
line, a server that cannot be asked is `server_error`, a catalog that cannot be read is a
line in `problems`. A medvault.toml that does not validate is the one error (ConfigError):
nothing can be read against it. The per-source reckoning (newest backup, newest WAL, last
drill, clock skew) is status's own (service/status.py), so both report the same ages.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medvault.errors import MedvaultError, UsageError, first_line
from medvault.monitoring.facts import (
    JobFacts,
    Observations,
    RepositoryFacts,
    RunningJob,
    SourceFacts,
)

if TYPE_CHECKING:
    from medvault.catalog.store import Catalog, JobHistory
    from medvault.config import RepositorySettings, SourceSettings
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.service.session import Session
    from medvault.verification.drills import DrillResult

# Seconds to wait for a source's server: a scrape must not hang on one that is down.
SERVER_TIMEOUT_S = 3
# How many successful backups before the newest one the moving average judges.
AVERAGED = 7


def gather(
    session: Session,
    *,
    running: Sequence[RunningJob] = (),
    now: dt.datetime | None = None,
) -> Observations:
    """Everything metrics and alerts judge, read now. `running`: the runs under way that the
    caller knows of (serve's own jobs)."""
    now = now or dt.datetime.now(dt.UTC)
    problems: list[str] = []
    targets = _targets(session, problems)
    readings: list[_Reading] = []
    try:
        for name, url, settings in targets:
            readings.append(_read_repository(session, name, url, settings, now))
        sources = _sources(session, readings, problems)
        catalog = _open_catalog(session, problems)
        try:
            jobs, checks = _catalog_facts(catalog, readings, problems)
        finally:
            if catalog is not None:
                catalog.close()
        source_facts = tuple(
            _source_facts(session, name, reading, section, now, problems)
            for name, (reading, section) in sorted(sources.items())
        )
    finally:
        for reading in readings:
            if reading.repo is not None:
                session.close_opened(reading.repo)
    return Observations(
        taken=now,
        sources=source_facts,
        repositories=tuple(r.facts(checks.get(r.name)) for r in readings),
        jobs=tuple(jobs),
        running=tuple(running),
        problems=tuple(problems),
    )


# -- repositories --------------------------------------------------------------------------


@dataclass
class _Reading:
    """One repository as read: its facts so far and what its sources' facts need."""

    name: str
    url: str
    error: str | None = None
    stored_bytes: int | None = None
    capacity_bytes: int | None = None
    used_ratio: float | None = None
    key_created: dt.datetime | None = None
    clock_skew_s: float | None = None
    repo: Repository | None = None
    snapshots: list[Snapshot] = field(default_factory=list)
    drills: list[DrillResult] = field(default_factory=list)

    def facts(self, last_check: JobFacts | None) -> RepositoryFacts:
        return RepositoryFacts(
            name=self.name,
            url=self.url,
            opened=self.error is None,
            error=self.error,
            stored_bytes=self.stored_bytes,
            capacity_bytes=self.capacity_bytes,
            used_ratio=self.used_ratio,
            key_created=self.key_created,
            clock_skew_s=self.clock_skew_s,
            last_check=last_check,
        )


def _targets(
    session: Session, problems: list[str]
) -> list[tuple[str, str, RepositorySettings | None]]:
    """Every configured [repository.NAME]; without any, the session's repository (--repo)."""
    try:
        if session.configured and session.settings.repository:
            return [(name, s.url, s) for name, s in session.settings.repository.items()]
        url, settings = session.repository_target()
    except UsageError as exc:  # no repository given; a broken medvault.toml stays an error
        problems.append(f"configuration: {first_line(exc)}")
        return []
    return [(url, url, settings)]


def _read_repository(
    session: Session,
    name: str,
    url: str,
    settings: RepositorySettings | None,
    now: dt.datetime,
) -> _Reading:
    from medvault.service.status import skewed_snapshots
    from medvault.verification.drills import list_results

    reading = _Reading(name, url)
    try:
        repo = session.open(selector=name if settings is not None else url)
    except (MedvaultError, OSError) as exc:
        reading.error = first_line(exc)
        return reading
    try:
        reading.url = repo.url
        reading.snapshots = repo.list_snapshots()
        reading.stored_bytes = repo.stored_bytes()
        reading.drills = list_results(repo)
        created = [_time(slot.created) for slot in repo.key_slots() if slot.usable]
        reading.key_created = min(created, default=None)
        skews = [ahead.total_seconds() for _, ahead in skewed_snapshots(reading.snapshots, now)]
        skews += [abs(lock.clock_skew) for lock in repo.locks().locks if lock.clock_skew]
        reading.clock_skew_s = max(skews, default=None)
        quota = settings.quota_bytes if settings is not None else None
        reading.capacity_bytes, reading.used_ratio = _capacity(
            repo.local_path, quota, reading.stored_bytes
        )
    except (MedvaultError, OSError) as exc:
        reading.error = first_line(exc)
        session.close_opened(repo)
        return reading
    reading.repo = repo
    return reading


def _capacity(
    local_path: str | None, quota: int | None, stored: int
) -> tuple[int | None, float | None]:
    """(capacity, used ratio): against the quota when one is set, else the file system's
    size and use as df counts them (blocks reserved for root are not available)."""
    if quota is not None:
        return quota, stored / quota
    if local_path is None:
        return None, None
    fs = os.statvfs(local_path)
    used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
    usable = used + fs.f_bavail * fs.f_frsize
    return fs.f_blocks * fs.f_frsize, (used / usable if usable else None)


# -- sources -------------------------------------------------------------------------------


def _sources(
    session: Session, readings: list[_Reading], problems: list[str]
) -> dict[str, tuple[_Reading, SourceSettings | None]]:
    """Each source and the repository it backs up to: the configured ones; without a
    configuration, those the repository's snapshots name."""
    by_name = {r.name: r for r in readings}
    if not (session.configured and session.settings.source):
        return {s.source: (r, None) for r in readings for s in r.snapshots}
    from medvault.config import resolve_repository

    found: dict[str, tuple[_Reading, SourceSettings | None]] = {}
    for name, section in session.settings.source.items():
        repository = section.repository
        reading = by_name.get(repository) if repository is not None else None
        if repository is None:
            try:
                url, chosen = resolve_repository(session.settings, None, name)
            except MedvaultError as exc:
                problems.append(f"source {name}: {first_line(exc)}")
                continue
            configured = session.settings.repository.items()
            repository = next((n for n, s in configured if s is chosen), None)
            # MEDVAULT_REPOSITORY may name the repository by its URL rather than its name.
            by_url = next((r for r in readings if r.url == url), None)
            reading = by_name.get(repository) if repository is not None else by_url
        if reading is None:
            problems.append(f"source {name}: its repository is not configured")
            continue
        found[name] = (reading, section)
    return found


def _source_facts(
    session: Session,
    name: str,
    reading: _Reading,
    section: SourceSettings | None,
    now: dt.datetime,
    problems: list[str],
) -> SourceFacts:
    from medvault.durations import parse_duration
    from medvault.service.status import backup_time, keeps_wal, last_drill, newest_wal_age

    own = [s for s in reading.snapshots if s.source == name]
    tier_name = section.tier if section is not None else (own[-1].tier if own else None)
    tier = session.settings.tier.get(tier_name) if tier_name and section is not None else None
    repo = reading.repo
    wal_lag = None
    if repo is not None and keeps_wal(section, own):
        found: list[str] = []
        try:
            wal_lag = newest_wal_age(repo, name, now, found)[1]
        except (MedvaultError, OSError) as exc:
            found.append(f"its WAL archive could not be read: {first_line(exc)}")
        problems += [f"source {name}: {problem}" for problem in found]
    by_kind: dict[str, int] = {}
    for kind in sorted({s.kind for s in own}):
        newest = repo.newest([s for s in own if s.kind == kind]) if repo is not None else None
        if newest is not None and "total_bytes" in newest.stats:
            by_kind[kind] = int(newest.stats["total_bytes"])
    sizes = _sizes(own)
    drill = last_drill(reading.drills, name)
    archiver = _archiver(section)
    return SourceFacts(
        source=name,
        kind=section.kind if section is not None else (own[-1].kind if own else "files"),
        repository=reading.name,
        tier=tier_name,
        rpo_s=parse_duration(tier.rpo).total_seconds() if tier and tier.rpo else None,
        rto_s=parse_duration(tier.rto).total_seconds() if tier and tier.rto else None,
        last_backup=backup_time(repo, own) if repo is not None else None,
        last_backup_bytes=sizes[0] if sizes else None,
        previous_backup_bytes=tuple(sizes[1 : 1 + AVERAGED]),
        backup_bytes_by_kind=by_kind,
        min_size=session.settings.backup_min_size(name) if section is not None else None,
        wal_lag_s=wal_lag,
        archiver_failing=archiver[0],
        archiver_error=archiver[1],
        server_error=archiver[2],
        last_drill=_time(drill.started) if drill is not None else None,
        last_drill_ok=drill.ok if drill is not None else None,
        last_drill_rto_s=drill.rto_s if drill is not None else None,
    )


def _archiver(section: SourceSettings | None) -> tuple[bool, str | None, str | None]:
    """(failing, its last failure, why the server could not be asked) of a PostgreSQL
    source's archiver, from pg_stat_archiver."""
    if section is None or section.kind != "postgres":
        return False, None, None
    from medvault.sources.postgres.walstatus import archiver_stats

    try:
        stats = archiver_stats(section.dsn, timeout=SERVER_TIMEOUT_S)
    except MedvaultError as exc:
        return False, None, first_line(exc)
    if not stats["failing"]:
        return False, None, None
    failed = stats["last_failed_time"]
    when = failed.isoformat() if isinstance(failed, dt.datetime) else str(failed)
    return True, f"archiving {stats['last_failed_wal']} failed at {when}", None


# -- the catalog ---------------------------------------------------------------------------


def _open_catalog(session: Session, problems: list[str]) -> Catalog | None:
    from medvault.service.history import open_catalog

    try:
        return open_catalog(session)
    except MedvaultError as exc:
        problems.append(f"catalog: {first_line(exc)}")
        return None


def _sizes(own: list[Snapshot]) -> list[int]:
    """The sizes (bytes the snapshot holds) of the newest snapshot and the ones before it
    of the same kind and type, newest first: an incremental is judged against
    incrementals, a dump against dumps. Bytes read would judge an unchanged tree's
    incremental (nothing read) as a backup gone missing."""
    if not own:
        return []
    newest = max(own, key=lambda s: s.time)
    alike = [
        s
        for s in own
        if (s.kind, s.backup_type) == (newest.kind, newest.backup_type) and "total_bytes" in s.stats
    ]
    alike.sort(key=lambda s: s.time, reverse=True)
    return [int(s.stats["total_bytes"]) for s in alike[: 1 + AVERAGED]]


def _catalog_facts(
    catalog: Catalog | None,
    readings: list[_Reading],
    problems: list[str],
) -> tuple[list[JobFacts], dict[str, JobFacts]]:
    """Every source and operation's history, and each repository's last check."""
    if catalog is None:
        return [], {}
    try:
        jobs = [job_facts(h) for h in catalog.job_history()]
        checks: dict[str, JobFacts] = {}
        for reading in readings:
            history = catalog.job_history(repository=reading.url, operation="check")
            newest = max(history, key=lambda h: h.last_started, default=None)
            if newest is not None:
                checks[reading.name] = job_facts(newest)
    except MedvaultError as exc:
        problems.append(f"catalog: {first_line(exc)}")
        return [], {}
    return jobs, checks


def job_facts(history: JobHistory) -> JobFacts:
    return JobFacts(
        source=history.source,
        operation=history.operation,
        last_status=history.last_status,
        last_ended=history.last_ended,
        last_error=history.last_error,
        last_success=history.last_success,
        consecutive_failures=history.consecutive_failures,
        last_duration_s=history.last_duration_s,
    )


def _time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
