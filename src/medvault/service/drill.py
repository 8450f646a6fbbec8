"""drill and drills: restore tests with validation and measured RTO, and their history.

A drill restores a snapshot into scratch space, validates it, measures the time against the
tier's RTO and records the result in the repository (verification/drills.py does the work).
A drill that fails is stored and returned like one that passed, with `failure` saying why;
its run is recorded as failed (Run.fail). The shell shows every check, then ends with the
drill's exit code (DrillFailed)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.errors import SnapshotNotFound, UsageError

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.service.runs import Run
    from medvault.service.session import Session
    from medvault.verification.drills import DrillResult

# --kind names, and the snapshot kind each drills.
KINDS = {
    "physical": "postgres.physical",
    "logical": "postgres.logical",
    "files": "files",
    "csv": "postgres.csv",
}


@dataclass(frozen=True)
class DrillOptions:
    source: str  # a source from medvault.toml, or a source name
    snapshot: str | None = None  # default: the newest of the source
    scratch: str | None = None  # default: [drill] scratch, else the temporary directory
    to_latest: bool = False  # physical: replay to the newest archived WAL
    kind: str | None = None  # "physical", "logical" or "files": the newest of that kind
    # A snapshot of the source drawn at random from those taken within this span (a
    # procedure's "any backup of the last 30 days"); the draw is seeded by `seed`, and both
    # are in the run's record, so the choice can be repeated.
    random_within: dt.timedelta | None = None
    seed: str | None = None


@dataclass(frozen=True)
class DrillRun:
    snapshot: Snapshot
    result: DrillResult  # as stored in the repository
    rto: str | None  # the tier's RTO as configured ("4h"), if it has one
    failure: str | None = None  # one line, when the drill failed


@dataclass(frozen=True)
class DrillHistory:
    results: tuple[DrillResult, ...]  # oldest first


def drill(session: Session, options: DrillOptions) -> DrillRun:
    """Run, validate and record one drill; a failed drill is returned with `failure` set."""
    from medvault.config import PostgresCsvSourceSettings, PostgresSourceSettings
    from medvault.durations import parse_duration
    from medvault.postgres.server import dsn_field
    from medvault.verification.drills import run_drill, store_result
    from medvault.verification.physical_drill import DrillOptions as CheckOptions

    with session.run("drill", source=options.source) as run:
        _validate(options)
        source = options.source
        repo = session.open(source)
        run.repository = repo.url
        if options.random_within is not None:
            snap, run.details["pick"] = _random_pick(repo, options)
        else:
            snap = _chosen(repo, options, run)
        run.touched(snap.id)
        settings = session.settings.source.get(source) if session.configured_sources() else None
        tier = session.settings.tier.get(settings.tier) if settings and settings.tier else None
        rto = parse_duration(tier.rto) if tier is not None and tier.rto else None
        postgres = settings if isinstance(settings, PostgresSourceSettings) else None
        checks = CheckOptions()
        if postgres is not None:
            checks = CheckOptions(
                tuple(postgres.drill.checks),
                postgres.drill.database or dsn_field(postgres.dsn, "dbname") or "postgres",
                postgres.drill.shared_buffers,
            )
        result = run_drill(
            repo,
            snap,
            rto=rto,
            scratch=options.scratch or session.settings.drill.scratch,
            dsn=settings.dsn
            if isinstance(settings, PostgresSourceSettings | PostgresCsvSourceSettings)
            else None,
            pg_bin=postgres.pg_bin if postgres else None,
            to_latest=options.to_latest,
            options=checks,
        )
        store_result(repo, result)
        run.details.update(
            drill=result.id,
            kind=snap.kind,
            passed=result.ok,
            rto_s=result.rto_s,
            rto_target_s=result.rto_target_s,
            within_rto=result.within_rto,
            failed_checks=[c.name for c in result.checks if not c.ok],
        )
        rto_text = tier.rto if tier is not None and tier.rto else None
        if result.ok:
            return DrillRun(snap, result, rto_text)
        reason = result.error or next(
            (f"{c.name}: {c.detail}" for c in result.checks if not c.ok), ""
        )
        failure = f"drill of snapshot {snap.short_id} failed: {reason}"
        run.fail(failure)
        return DrillRun(snap, result, rto_text, failure)


def _validate(options: DrillOptions) -> None:
    if options.kind is not None and options.kind not in KINDS:
        raise UsageError("--kind is physical, logical, files or csv")
    if options.snapshot is not None and options.kind is not None:
        raise UsageError("give --snapshot or --kind, not both")
    if options.to_latest and options.kind not in (None, "physical"):
        raise UsageError("--to-latest replays WAL: it drills physical backups only")
    if options.random_within is not None and (options.snapshot or options.kind):
        raise UsageError("a random pick chooses the snapshot: give no snapshot or kind")


def _random_pick(repo: Repository, options: DrillOptions) -> tuple[Snapshot, dict[str, object]]:
    """The draw `random:SPAN:SOURCE` makes as a selector (service/selectors.py)."""
    from medvault.service.selectors import random_pick

    assert options.random_within is not None
    return random_pick(repo, options.random_within, options.source, options.seed or "")


def _chosen(repo: Repository, options: DrillOptions, run: Run) -> Snapshot:
    from medvault.service.selectors import find_snapshot

    if options.snapshot is not None:
        return find_snapshot(repo, options.snapshot, run)
    if options.kind is None and not options.to_latest:
        return repo.find_snapshot(f"latest:{options.source}")
    kind = options.kind or "physical"
    return _newest(repo, options.source, kind, KINDS[kind])


def _newest(repo: Repository, source: str, kind: str, snapshot_kind: str) -> Snapshot:
    from medvault.recovery.postgres import physical_snapshots

    if snapshot_kind == "postgres.physical":
        found = physical_snapshots(repo, source)  # complete ones, by consistency point
    else:
        found = sorted(
            (s for s in repo.list_snapshots() if s.source == source and s.kind == snapshot_kind),
            key=lambda s: s.taken,
        )
    newest = repo.newest(found)
    if newest is None:
        raise SnapshotNotFound(f"the repository holds no {kind} snapshot of {source}")
    return newest


def drills(session: Session) -> DrillHistory:
    """Past drill results, oldest first."""
    from medvault.verification.drills import list_results

    with session.run("drills") as run:
        repo = session.open()
        run.repository = repo.url
        results = tuple(list_results(repo))
        run.details["drills"] = len(results)
        return DrillHistory(results)
