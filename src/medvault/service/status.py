"""`status`: per source, the newest backup and WAL against the tier's RPO, the last drill
against its RTO, and how far the repository's secondary lags behind it. The report's state
is the worst of them (the CLI exits 0, 1, 2 for OK, WARN, CRITICAL, as Nagios plugins do).

States: OK, WARN (past the RPO, within twice it; a failed or overdue drill; a clock problem;
or the secondary behind), CRITICAL (never backed up or beyond twice the RPO; the secondary
unreachable; or a drill's scratch copy of patient data left on this host).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from medvault.errors import MedvaultError

if TYPE_CHECKING:
    from medvault.config import SourceSettings, TierSettings
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.service.session import Session
    from medvault.verification.drills import DrillResult

OK, WARN, CRITICAL = "OK", "WARN", "CRITICAL"
STATES = (OK, WARN, CRITICAL)  # ascending: a report's state is its worst


def worst(states: list[str]) -> str:
    return max(states, key=STATES.index, default=OK)


@dataclass(frozen=True)
class SourceStatus:
    """One source's row; ages in seconds, None when there is nothing to date."""

    source: str
    tier: str | None
    rpo: str | None
    snapshots: int
    last_backup: str | None
    last_backup_age_s: float | None
    newest_wal: str | None
    newest_wal_age_s: float | None
    rto: str | None
    last_drill: str | None
    last_drill_age_s: float | None
    last_drill_ok: bool | None
    last_drill_rto_s: float | None
    drill_within_rto: bool | None
    drill_every: str | None
    drill_overdue: bool
    problems: tuple[str, ...]
    state: str


@dataclass(frozen=True)
class SecondaryLag:
    """What the secondary lacks of the primary; `error` when it could not be compared."""

    name: str
    state: str
    error: str | None = None
    snapshots_missing: int = 0
    oldest_missing: str | None = None
    oldest_missing_age_s: float | None = None
    wal_missing: int = 0

    def as_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"name": self.name, "state": self.state, "error": self.error}
        return {
            "name": self.name,
            "snapshots_missing": self.snapshots_missing,
            "oldest_missing": self.oldest_missing,
            "oldest_missing_age_s": self.oldest_missing_age_s,
            "wal_missing": self.wal_missing,
            "state": self.state,
        }


@dataclass(frozen=True)
class DrillScratch:
    """A drill's scratch directory left on this host, holding restored patient data."""

    path: str
    owner: str
    started: str | None
    drill_ended: bool
    server_pid: int | None  # a PostgreSQL server still running on it
    state: str = CRITICAL


@dataclass(frozen=True)
class StatusReport:
    repository: str
    snapshots: int
    stored_bytes: int
    snapshot_bytes: int
    # What the snapshots hold against what the packs take: dedup and compression together.
    dedup_ratio: float | None
    sources: tuple[SourceStatus, ...]
    problems: tuple[str, ...]  # of the repository: locks that are not locks, clock skew
    secondary: SecondaryLag | None
    drill_scratch: tuple[DrillScratch, ...]

    @property
    def state(self) -> str:
        """The worst state of the report: its sources, the secondary, drill scratch left
        behind, and WARN for a repository problem (a clock, a lock that is not one)."""
        states = [row.state for row in self.sources]
        states += [left.state for left in self.drill_scratch]
        states += [self.secondary.state] if self.secondary is not None else []
        states += [WARN] if self.problems else []
        return worst(states)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON values (`status --json`)."""
        return {
            "state": self.state,
            "repository": self.repository,
            "snapshots": self.snapshots,
            "stored_bytes": self.stored_bytes,
            "snapshot_bytes": self.snapshot_bytes,
            "dedup_ratio": self.dedup_ratio,
            "sources": [asdict(row) for row in self.sources],
            "problems": list(self.problems),
            "secondary": self.secondary.as_dict() if self.secondary is not None else None,
            "drill_scratch": [asdict(left) for left in self.drill_scratch],
        }


def status(session: Session) -> StatusReport:
    """Each source's newest backup and WAL against its tier's RPO, and the secondary's lag."""
    with session.run("status") as run:
        repo = session.open()
        run.repository = repo.url
        _, settings = session.repository_target()
        snaps = repo.list_snapshots()
        stored = repo.stored_bytes()
        logical = sum(int(s.stats.get("total_bytes", 0)) for s in snaps)
        rows = _source_rows(session, repo, snaps)
        problems = _lock_problems(repo)
        scratch = _drill_scratch(session)
        lag = None
        if settings is not None and settings.secondary is not None:
            lag = _secondary_lag(session, repo, settings.secondary, snaps)
        run.details["states"] = {row.source: row.state for row in rows}
        return StatusReport(
            repository=repo.url,
            snapshots=len(snaps),
            stored_bytes=stored,
            snapshot_bytes=logical,
            dedup_ratio=round(logical / stored, 2) if stored else None,
            sources=tuple(rows),
            problems=tuple(problems),
            secondary=lag,
            drill_scratch=tuple(scratch),
        )


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def rpo_state(age: float | None, rpo: dt.timedelta | None) -> str:
    if age is None:
        return CRITICAL
    if rpo is None or age <= rpo.total_seconds():
        return OK
    return WARN if age <= 2 * rpo.total_seconds() else CRITICAL


def _source_rows(session: Session, repo: Repository, snaps: list[Snapshot]) -> list[SourceStatus]:
    from medvault.verification.drills import list_results

    drills = list_results(repo)
    now = dt.datetime.now(dt.UTC)
    configured = session.settings.source if session.configured_sources() else {}
    names = sorted({*configured, *(s.source for s in snaps)})
    rows = []
    for name in names:
        own = [s for s in snaps if s.source == name]
        section = configured.get(name)
        tier_name = section.tier if section is not None else (own[-1].tier if own else None)
        tier = session.settings.tier.get(tier_name) if tier_name and configured else None
        wal_kept = keeps_wal(section, own)
        rows.append(_source_row(repo, name, own, tier_name, tier, wal_kept, drills, now))
    return rows


def keeps_wal(section: SourceSettings | None, own: list[Snapshot]) -> bool:
    """Whether a source's WAL is archived (a PostgreSQL source, or physical snapshots)."""
    return (section is not None and section.kind == "postgres") or any(
        s.kind == "postgres.physical" for s in own
    )


def skewed_snapshots(own: list[Snapshot], now: dt.datetime) -> list[tuple[Snapshot, dt.timedelta]]:
    """Snapshots dated further ahead of `now` than the clocks' tolerance, and by how much."""
    from medvault.clocks import ahead_by

    return [(s, ahead) for s in own if (ahead := ahead_by(s.taken, now)) is not None]


def backup_time(repo: Repository, own: list[Snapshot]) -> dt.datetime | None:
    """When the source's newest snapshot ended (its start, for snapshots without an end)."""
    newest = repo.newest(own)
    if newest is None:
        return None
    return _parse_time(newest.end_time) if newest.end_time else newest.taken


def last_drill(drills: list[DrillResult], source: str) -> DrillResult | None:
    """The source's newest drill (`drills` oldest first, as list_results gives them)."""
    return next((d for d in reversed(drills) if d.source == source), None)


def _source_row(
    repo: Repository,
    name: str,
    own: list[Snapshot],
    tier_name: str | None,
    tier: TierSettings | None,
    wal_kept: bool,
    drills: list[DrillResult],
    now: dt.datetime,
) -> SourceStatus:
    from medvault.clocks import describe_span
    from medvault.durations import parse_duration

    rpo = parse_duration(tier.rpo) if tier is not None and tier.rpo else None
    problems = [
        f"clock skew: snapshot {s.short_id} is dated {s.time}, "
        f"{describe_span(ahead)} ahead of this host (written on {s.host})"
        for s, ahead in skewed_snapshots(own, now)
    ]
    last = backup_time(repo, own)
    backup_age = (now - last).total_seconds() if last else None
    newest_wal, wal_age = newest_wal_age(repo, name, now, problems) if wal_kept else (None, None)
    # With WAL archiving, what could be lost is what came after the newest archived WAL.
    ages = [a for a in (backup_age, wal_age) if a is not None]
    exposure = min(ages) if ages else None
    drill = last_drill(drills, name)
    rto = parse_duration(tier.rto) if tier is not None and tier.rto else None
    state = rpo_state(exposure, rpo)
    if drill is not None and not drill.ok and state == OK:
        state = WARN  # the last restore test failed
    drill_every = parse_duration(tier.drill_every) if tier and tier.drill_every else None
    passed = [d for d in drills if d.source == name and d.ok]
    drill_overdue = drill_every is not None and (
        not passed
        or (now - _parse_time(passed[-1].started)).total_seconds() > drill_every.total_seconds()
    )
    if drill_overdue and state == OK:
        state = WARN  # not proven restorable recently enough
    if problems and state == OK:
        state = WARN
    return SourceStatus(
        source=name,
        tier=tier_name,
        rpo=tier.rpo if tier is not None else None,
        snapshots=len(own),
        last_backup=own[-1].time if own else None,
        last_backup_age_s=backup_age,
        newest_wal=newest_wal,
        newest_wal_age_s=wal_age,
        rto=tier.rto if tier is not None else None,
        last_drill=drill.started if drill else None,
        last_drill_age_s=(now - _parse_time(drill.started)).total_seconds() if drill else None,
        last_drill_ok=drill.ok if drill else None,
        last_drill_rto_s=drill.rto_s if drill else None,
        drill_within_rto=(
            None if drill is None or rto is None else drill.rto_s <= rto.total_seconds()
        ),
        drill_every=tier.drill_every if tier is not None else None,
        drill_overdue=drill_overdue,
        problems=tuple(problems),
        state=state,
    )


def newest_wal_age(
    repo: Repository, source: str, now: dt.datetime, problems: list[str]
) -> tuple[str | None, float | None]:
    """The newest archived WAL file and its age; a clock problem goes to `problems`."""
    from medvault.clocks import TOLERANCE, describe_span
    from medvault.repository.wal import WalArchive

    archive = WalArchive(repo, source)
    wal_names = archive.names()
    if not wal_names:
        return None, None
    newest_wal = wal_names[-1]
    archived = archive.archived_at(newest_wal)
    wal_age = now.timestamp() - archived if archived else None
    if wal_age is not None and -wal_age > TOLERANCE.total_seconds():
        problems.append(
            f"clock skew: WAL {newest_wal} was archived "
            f"{describe_span(dt.timedelta(seconds=-wal_age))} in this host's future"
        )
        wal_age = None
    return newest_wal, wal_age


def _secondary_lag(
    session: Session, repo: Repository, name: str, snaps: list[Snapshot]
) -> SecondaryLag:
    from medvault.repository.copy import RepositoryCopier
    from medvault.repository.wal import WalArchive, archived_sources

    try:
        other = session.open(selector=name, other=True, sharing=repo)
        copier = RepositoryCopier(repo, other)
        missing = [s for s in snaps if copier.existing_copy(s) is None]
        wal_missing = 0
        for source in sorted({s.source for s in snaps} | set(archived_sources(repo))):
            here = set(WalArchive(repo, source).names())
            there = set(WalArchive(other, source).names())
            wal_missing += len(here - there)
    except MedvaultError as exc:
        return SecondaryLag(name, CRITICAL, error=str(exc))
    now = dt.datetime.now(dt.UTC)
    oldest = min((s.taken for s in missing), default=None)
    return SecondaryLag(
        name,
        OK if not missing and not wal_missing else WARN,
        snapshots_missing=len(missing),
        oldest_missing=oldest.isoformat() if oldest else None,
        oldest_missing_age_s=(now - oldest).total_seconds() if oldest else None,
        wal_missing=wal_missing,
    )


def _lock_problems(repo: Repository) -> list[str]:
    """Locks whose holders' clocks disagree with the store's, and locks that are not locks."""
    table = repo.locks()
    problems = [f"{bad.describe()}; `medvault unlock` removes it" for bad in table.malformed]
    if any(lock.clock_skew is not None for lock in table.locks):
        now = repo.store_time()
        problems += [
            f"clock skew: {lock.describe(now)}"
            for lock in table.locks
            if lock.clock_skew is not None
        ]
    return problems


def _drill_scratch(session: Session) -> list[DrillScratch]:
    """Scratch directories of drills no longer running (killed before they could remove
    their restored copy), in the configured scratch root and the system's temporary
    directory, on this host."""
    import tempfile

    from medvault.verification.scratch import find_leftovers, scratch_root

    roots = [scratch_root(session.settings.drill.scratch), tempfile.gettempdir()]
    return [
        DrillScratch(
            path=item.path,
            owner=item.owner,
            started=item.started,
            drill_ended=item.ended,
            server_pid=item.server,
        )
        for item in find_leftovers(roots)
    ]
