"""Scheduled jobs: medvault.toml's schedules as jobs, and one job run through the existing
operations.

`jobs_from_settings` turns `[source.NAME.schedule]` and `[schedule]` into `Job`s with stable
names (`emr/full`, `repository/main/check`). `run_job` runs one of them in the job runner's
child process (cli/jobrun.py), each kind through the same service call a shell would make:

- full / incremental / differential: a files source's `backup_files` of that type; a
  PostgreSQL source's `backup_physical` (the local method when `pgdata` is set, else
  streamed, which is always full);
- logical: `backup_logical` (PostgreSQL only);
- check: `check` of the job's repository;
- drill: `drill` of the newest snapshot, or with `drill_pick = "random:30d"` of one drawn at
  random from the last 30 days, seeded per run (the seed is in the run's record);
- prune: `forget` by the source's retention policy (repository-wide: every source's), then
  `prune`;
- copy: `copy` to the repository's secondary (the source's snapshots, or all).

`schedule_listing` is what `medvault schedule` shows; `scheduler_for` builds the scheduler
`medvault serve` drives.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medvault.errors import UsageError
from medvault.scheduler.jobs import BACKUP_KINDS, Job

if TYPE_CHECKING:
    from collections.abc import Mapping

    from medvault.config import Settings
    from medvault.scheduler.loop import Clock, JobListing, Scheduler
    from medvault.service.session import Session

RUNNER = "medvault.cli.jobrun"  # python -m RUNNER --config FILE --job NAME
REPOSITORY_JOBS = ("check", "prune", "copy")


def jobs_from_settings(settings: Settings) -> tuple[Job, ...]:
    """Every scheduled job of medvault.toml (validated there), sources first by name."""
    from medvault.config import SCHEDULE_KINDS

    jobs: list[Job] = []
    for name in sorted(settings.source):
        schedule = settings.source[name].schedule
        repository = settings.job_repository(name)
        for kind, spec in schedule.given(SCHEDULE_KINDS).items():
            assert repository is not None  # config refuses a schedule without one
            jobs.append(
                Job(
                    name=f"{name}/{kind}",
                    kind=kind,
                    schedule=spec,
                    repository=repository,
                    source=name,
                    timezone=schedule.timezone,
                    catch_up=schedule.catch_up,
                    drill_pick=schedule.drill_pick,
                    secondary=settings.repository[repository].secondary if kind == "copy" else None,
                )
            )
    wide = settings.schedule
    repository = settings.job_repository(None)
    for kind, spec in wide.given(REPOSITORY_JOBS).items():
        assert repository is not None
        jobs.append(
            Job(
                name=f"repository/{repository}/{kind}",
                kind=kind,
                schedule=spec,
                repository=repository,
                timezone=wide.timezone,
                catch_up=wide.catch_up,
                secondary=settings.repository[repository].secondary if kind == "copy" else None,
            )
        )
    return tuple(jobs)


def find_job(session: Session, name: str) -> Job:
    jobs = jobs_from_settings(session.settings) if session.configured else ()
    for job in jobs:
        if job.name == name:
            return job
    known = ", ".join(job.name for job in jobs) or "none"
    raise UsageError(f"no scheduled job {name!r} in medvault.toml (jobs: {known})")


# -- one job -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobResult:
    job: str
    status: str  # ok / incomplete / failed (found damage, a drill that failed)
    summary: str  # one line, without paths or patient data
    exit_code: int  # the CLI's for the same outcome


def run_job(session: Session, job: Job, *, seed: str | None = None) -> JobResult:
    """Run one job with the session's caller; errors are raised as the operation raises
    them (the runner reports them as the CLI does). The session works on the job's
    repository. `seed`: a random drill pick's (default: fresh)."""
    session.repository = job.repository
    if job.kind in BACKUP_KINDS:
        return _backup(session, job)
    if job.kind == "check":
        return _check(session, job)
    if job.kind == "drill":
        return _drill(session, job, seed or os.urandom(8).hex())
    if job.kind == "prune":
        return _prune(session, job)
    return _copy(session, job)


def _backup(session: Session, job: Job) -> JobResult:
    from medvault.config import PostgresSourceSettings
    from medvault.errors import EXIT_INCOMPLETE, ReplicationFailed
    from medvault.service import backup

    assert job.source is not None
    settings = session.settings.source[job.source]
    result: backup.BackupResult
    if job.kind == "logical":
        result = backup.backup_logical(session, backup.LogicalBackupOptions(job.source))
    elif settings.kind == "redis":
        from medvault.service.redis import RedisBackupOptions, backup_redis

        result = backup_redis(session, RedisBackupOptions(job.source))
    elif isinstance(settings, PostgresSourceSettings):
        method = "local" if settings.pgdata else "stream"
        options = backup.PhysicalBackupOptions(job.source, job.kind, method)
        result = backup.backup_physical(session, options)
    else:
        files = backup.FilesBackupOptions(source=job.source, backup_type=job.kind)
        result = backup.backup_files(session, files)
    snap = result.snapshot
    summary = f"snapshot {snap.short_id} ({snap.kind}, {snap.backup_type or job.kind})"
    if result.replication.replicated_to:
        summary += f", replicated to {result.replication.replicated_to}"
    if result.complete and result.replication.error is None:
        return JobResult(job.name, "ok", summary, 0)
    code = ReplicationFailed.exit_code if result.complete else EXIT_INCOMPLETE
    return JobResult(job.name, "incomplete", summary + ", incomplete", code)


def _check(session: Session, job: Job) -> JobResult:
    from medvault.errors import IntegrityError
    from medvault.service.check import CheckOptions, check

    result = check(session, CheckOptions())
    summary = f"{result.snapshots} snapshot(s), {result.packs} pack(s)"
    if result.ok:
        return JobResult(job.name, "ok", summary + ": no errors", 0)
    first = result.errors[0]
    return JobResult(
        job.name,
        "failed",
        f"{summary}: {len(result.errors)} error(s), first: {first}",
        IntegrityError.exit_code,
    )


def _drill(session: Session, job: Job, seed: str) -> JobResult:
    from medvault.errors import DrillFailed
    from medvault.service.drill import DrillOptions, drill

    assert job.source is not None
    pick = job.pick
    options = DrillOptions(
        job.source, random_within=pick.within, seed=seed if pick.random else None
    )
    done = drill(session, options)
    summary = f"snapshot {done.snapshot.short_id}, restored in {done.result.rto_s:.0f}s"
    if pick.random:
        summary += f" (random pick, seed {seed})"
    if done.failure is None:
        return JobResult(job.name, "ok", summary + ": passed", 0)
    return JobResult(job.name, "failed", done.failure, DrillFailed.exit_code)


def _prune(session: Session, job: Job) -> JobResult:
    from medvault.service.forget import REMOVED, ForgetOptions, forget
    from medvault.service.prune import PruneOptions, prune

    forgotten = forget(session, ForgetOptions(source=job.source))
    removed = sum(1 for o in forgotten.outcomes if o.action == REMOVED)
    pruned = prune(session, PruneOptions())
    summary = (
        f"forgot {removed} snapshot(s); {pruned.packs.deleted_packs} pack(s) deleted, "
        f"{pruned.packs.condemned_packs} condemned"
    )
    return JobResult(job.name, "ok", summary, 0)


def _copy(session: Session, job: Job) -> JobResult:
    from medvault.service.copy import CopyOptions, copy

    assert job.secondary is not None
    done = copy(session, CopyOptions(job.repository, job.secondary, source=job.source))
    summary = (
        f"copied {len(done.copied)} snapshot(s) to {job.secondary}, "
        f"{len(done.present)} already there; {done.wal_copied} WAL file(s)"
    )
    return JobResult(job.name, "ok", summary, 0)


def release_locks(session: Session, job: Job) -> tuple[str, ...]:
    """After a job's process was killed: remove the locks of processes that are gone from
    every repository it touches (the audit observer seals the killed run as failed)."""
    from medvault.service.admin import unlock

    removed: list[str] = []
    for repository in job.repositories:
        session.repository = repository
        removed += unlock(session).removed
    return tuple(removed)


# -- the schedule ---------------------------------------------------------------------------


def schedule_dir(session: Session) -> Path:
    """`<state dir>/schedule`: state.json, logs/, runs/ (the runner's result files)."""
    if session.state_dir is None:
        raise UsageError("scheduled jobs need a state directory (MEDVAULT_STATE_DIR)")
    return session.state_dir / "schedule"


@dataclass(frozen=True)
class ScheduleListing:
    now: dt.datetime
    state_path: str
    jobs: tuple[JobListing, ...]


def schedule_listing(session: Session, now: dt.datetime | None = None) -> ScheduleListing:
    """Every job with its next run and last result, as the state file has them."""
    from medvault.scheduler import state
    from medvault.scheduler.loop import listing

    jobs = jobs_from_settings(session.settings) if session.configured else ()
    path = schedule_dir(session) / "state.json"
    now = now or dt.datetime.now(dt.UTC)
    return ScheduleListing(now, str(path), listing(jobs, state.load(path, set_aside=False), now))


def scheduler_for(
    session: Session,
    *,
    clock: Clock | None = None,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Scheduler:
    """The scheduler of `medvault serve`: the configuration's jobs, run one per child
    process (`python -m medvault.cli.jobrun --config FILE --job NAME`), state and logs
    under the session's state directory. The children inherit the service's environment
    (MEDVAULT_PASSWORD and the like; `env` replaces it) and read the same medvault.toml."""
    from medvault.configfile import find_config
    from medvault.scheduler.launch import ProcessLauncher
    from medvault.scheduler.loop import Scheduler, system_clock

    config = find_config(session.config)
    if config is None:
        raise UsageError("scheduled jobs need a medvault.toml (--config FILE)")
    directory = schedule_dir(session)
    command = [python or sys.executable, "-m", RUNNER, "--config", str(config)]
    if session.state_dir is not None:
        command += ["--state-dir", str(session.state_dir)]
    launcher = ProcessLauncher(command, directory, env)
    jobs = jobs_from_settings(session.settings)
    return Scheduler(jobs, clock or system_clock, directory / "state.json", launcher)
