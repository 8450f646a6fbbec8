"""PostgreSQL recovery: a physical snapshot into a data directory (`restore_physical`), the
base backup chosen for a recovery target (`pitr`), and restore points to recover to (`mark`).

The restored server fetches its WAL with `medvault wal-fetch`, run by PostgreSQL without the
caller's environment: `restore_command` spells out everything that needs (this program by
absolute path, the configuration, the repository, where the credential is). What only the
shell can know (the program's path, the credential it was given, its environment) comes in
through `WalFetchAccess`.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medvault.configfile import find_config
from medvault.credentials import CredentialOptions
from medvault.errors import UsageError
from medvault.service.restore import (
    ProgressDisplay,
    RestoredFiles,
    no_progress,
    note_reason,
    restore_hooks,
    total_bytes,
    with_hook_problem,
)
from medvault.service.selectors import find_snapshot

if TYPE_CHECKING:
    from medvault.config import PostgresSourceSettings
    from medvault.recovery.postgres import Reached, RecoveryTarget, WalRange
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.service.runs import Run
    from medvault.service.session import Session

RECOVERY_TARGETS = ("immediate", "latest")


# -- options and results ------------------------------------------------------------------


@dataclass(frozen=True)
class WalFetchAccess:
    """What the restored server's `medvault wal-fetch` needs that only the shell knows."""

    program: str | None = None  # medvault, by absolute path (None: not found)
    # The key file, password file or command the shell was given (option or environment).
    credential: CredentialOptions = field(default_factory=CredentialOptions)
    # The shell's environment: where an S3 store is, and its keys (childenv.store_access).
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class RecoverySetup:
    """Where recovery stops and how the restored cluster is set up (defaults: the CLI's)."""

    recovery_target: str | None = None  # immediate | latest (None: latest, or a target_*)
    target_time: str | None = None
    target_lsn: str | None = None
    target_xid: str | None = None
    target_name: str | None = None  # a restore point (see `mark`)
    target_action: str = "promote"  # promote, pause or shutdown
    target_timeline: str = "latest"  # latest, current or a number
    standby: bool = False
    start: bool = False  # start the server and wait for recovery to end
    port: int | None = None
    delta: bool = False  # reuse a data directory of this cluster
    force: bool = False  # empty a non-empty data directory first
    keep_archiving: bool = False
    tablespaces: tuple[str, ...] = ()  # OID=DIR
    wal_fetch: WalFetchAccess = field(default_factory=WalFetchAccess)


@dataclass(frozen=True)
class PhysicalRestoreOptions:
    snapshot: str
    pgdata: str
    recovery: RecoverySetup = field(default_factory=RecoverySetup)
    reason: str | None = None


@dataclass(frozen=True)
class PitrOptions:
    source: str
    pgdata: str
    recovery: RecoverySetup = field(default_factory=RecoverySetup)
    reason: str | None = None


@dataclass(frozen=True)
class BaseBackup:
    """The base backup `pitr` chose, told to the shell before the restore starts."""

    snapshot_id: str
    short_id: str
    consistent_at: str


@dataclass(frozen=True)
class ServerReached:
    """Where a server started after the restore stood when recovery ended."""

    state: str  # promoted, paused, shut down, standby
    lsn: str | None
    time: str | None
    timeline: int | None
    port: int | None
    log: str
    stop_reason: str | None


@dataclass(frozen=True)
class PhysicalRestoreResult:
    snapshot_id: str
    short_id: str
    source: str
    pg_version: str
    pgdata: str
    written: RestoredFiles
    tablespaces: dict[str, str]  # oid -> where it was restored
    target: RecoveryTarget
    wal: WalRange  # archived WAL from the backup's start to the target
    signal: str  # recovery.signal or standby.signal
    reached: ServerReached | None  # None: not started
    # `[source.NAME.restore] checks`, run in the started server: name, ok, detail, seconds.
    checks: tuple[dict[str, object], ...] = ()
    check_failure: str | None = None  # the first that did not pass (the run failed)
    checks_not_run: str | None = None  # why configured checks could not run (no --start)
    hook_problem: str | None = None  # an after_restore hook that failed (the data stays)


@dataclass(frozen=True)
class MarkOptions:
    name: str  # 1-63 bytes
    source: str | None = None  # None: the only PostgreSQL source configured
    reason: str | None = None


@dataclass(frozen=True)
class MarkResult:
    name: str
    source: str
    lsn: str
    wal: str
    time: str


# -- the operations -------------------------------------------------------------------------


def restore_physical(
    session: Session, options: PhysicalRestoreOptions, *, progress: ProgressDisplay | None = None
) -> PhysicalRestoreResult:
    """Restore a physical snapshot into a data directory and write its recovery settings;
    with `start`, start the server and wait until recovery ends as the target says."""
    with session.run("restore") as run:
        note_reason(run, options.reason)
        repo = session.open()
        run.repository = repo.url
        snap = find_snapshot(repo, options.snapshot, run)
        run.source = snap.source
        run.touched(snap.id)
        run.details["kind"] = snap.kind
        with restore_hooks(session, run, snap, options.pgdata) as hooks:
            done = restore_found(
                session, run, repo, snap, options.pgdata, options.recovery, None, progress
            )
        return with_hook_problem(done, hooks.after_failure)


def pitr(
    session: Session,
    options: PitrOptions,
    *,
    on_chosen: Callable[[BaseBackup], None] | None = None,
    progress: ProgressDisplay | None = None,
) -> PhysicalRestoreResult:
    """Point-in-time recovery of a source: the newest base backup the target can start from,
    restored and set up to replay the archive to the target."""
    from medvault.postgres.facts import PhysicalFacts
    from medvault.recovery.postgres import choose_base_backup

    with session.run("pitr", source=options.source) as run:
        note_reason(run, options.reason)
        target = _target(options.recovery)
        repo = session.open(options.source)
        run.repository = repo.url
        snap = choose_base_backup(repo, options.source, target)
        run.touched(snap.id)
        if on_chosen is not None:
            on_chosen(BaseBackup(snap.id, snap.short_id, PhysicalFacts.of(snap).stop_time))
        with restore_hooks(session, run, snap, options.pgdata) as hooks:
            done = restore_found(
                session, run, repo, snap, options.pgdata, options.recovery, target, progress
            )
        return with_hook_problem(done, hooks.after_failure)


def mark(session: Session, options: MarkOptions) -> MarkResult:
    """Create a named restore point on a source's server (and switch WAL, so that it reaches
    the archive now), to recover to later with target_name."""
    from medvault.recovery.postgres import create_restore_point

    with session.run("mark", source=options.source) as run:
        note_reason(run, options.reason)
        run.details["name"] = options.name
        source, settings = _postgres_source(session, options.source)
        run.source = source
        point = create_restore_point(settings.dsn, options.name, what=f"PostgreSQL source {source}")
        run.details.update(lsn=point.lsn, wal=point.wal, time=point.time)
        return MarkResult(point.name, source, point.lsn, point.wal, point.time)


def resolve_recovery_target(
    recovery_target: str | None, old_spelling: str | None
) -> tuple[str | None, str | None]:
    """The recovery target from --recovery-target, or from --target immediate|latest as older
    versions spelled it; and then the notice that says so (--target is the directory a files
    snapshot is restored into)."""
    notice = None
    if old_spelling is not None:
        if recovery_target is not None:
            raise UsageError(
                "--target names the directory for a files snapshot; a physical snapshot's "
                "recovery target is --recovery-target alone"
            )
        if old_spelling not in RECOVERY_TARGETS:
            raise UsageError(
                f"--target {old_spelling!r}: a physical snapshot is restored into --pgdata DIR, "
                "and its recovery target is --recovery-target immediate|latest"
            )
        notice = (
            f"--target {old_spelling} is spelled --recovery-target {old_spelling} now "
            "(--target names the directory a files snapshot is restored into)"
        )
        recovery_target = old_spelling
    if recovery_target is not None and recovery_target not in RECOVERY_TARGETS:
        raise UsageError("--recovery-target is immediate or latest")
    return recovery_target, notice


# -- the work -------------------------------------------------------------------------------


def _target(setup: RecoverySetup) -> RecoveryTarget:
    from medvault.recovery.postgres import make_target

    return make_target(
        target=setup.recovery_target,
        time_=setup.target_time,
        lsn=setup.target_lsn,
        xid=setup.target_xid,
        name=setup.target_name,
        action=setup.target_action,
        timeline=setup.target_timeline,
    )


def restore_found(
    session: Session,
    run: Run,
    repo: Repository,
    snap: Snapshot,
    pgdata: str,
    setup: RecoverySetup,
    target: RecoveryTarget | None,
    progress: ProgressDisplay | None,
) -> PhysicalRestoreResult:
    """Restore `snap`, found in `repo` by the run `run`, into `pgdata`."""
    from medvault.postgres.facts import PhysicalFacts
    from medvault.recovery.postgres import PhysicalRestoreOptions as EngineOptions
    from medvault.recovery.postgres import parse_tablespace_options
    from medvault.recovery.postgres import restore_physical as restore_cluster

    target = target or _target(setup)
    run.destination = pgdata
    run.recovery_point = (
        f"end of base backup {snap.short_id} ({snap.end_time})"
        if target.kind == "immediate"
        else target.describe()
    )
    run.details.update(
        pgdata=pgdata,
        recovery_target=target.describe(),
        timeline=target.timeline,
        action=target.action,
    )
    if setup.standby:
        run.details["standby"] = True
    if setup.delta and setup.force:
        raise UsageError("--delta and --force exclude each other")
    if setup.standby and target.kind != "latest":
        raise UsageError("--standby follows the archive without a recovery target")
    options = EngineOptions(
        pgdata=pgdata,
        target=target,
        restore_command=restore_command(session, snap.source, setup.wal_fetch),
        standby=setup.standby,
        port=setup.port,
        delta=setup.delta,
        force=setup.force,
        keep_archiving=setup.keep_archiving,
        tablespaces=parse_tablespace_options(setup.tablespaces),
        start=setup.start,
        pg_bin=_pg_bin(session, snap.source),
        server_environment=(
            server_environment(session, snap.source, setup.wal_fetch) if setup.start else {}
        ),
    )
    with (progress or no_progress)(total_bytes(snap)) as advance:
        done = restore_cluster(repo, snap, options, advance)
    run.add_bytes(restored=done.files.bytes_written)
    run.details["wal"] = [done.wal.first, done.wal.last]
    reached = done.reached
    if reached is not None:
        run.details["reached"] = {"state": reached.state, "lsn": reached.lsn, "time": reached.time}
    checks, failure, not_run = _checks(session, run, snap.source, reached)
    return PhysicalRestoreResult(
        snapshot_id=snap.id,
        short_id=snap.short_id,
        source=snap.source,
        pg_version=PhysicalFacts.of(snap).pg_version,
        pgdata=done.pgdata,
        written=RestoredFiles.of(done.files),
        tablespaces=dict(done.tablespaces),
        target=target,
        wal=done.wal,
        signal=done.signal,
        reached=None
        if reached is None
        else ServerReached(
            state=reached.state,
            lsn=reached.lsn,
            time=reached.time,
            timeline=reached.timeline,
            port=reached.port,
            log=reached.log,
            stop_reason=reached.stop_reason,
        ),
        checks=tuple(checks),
        check_failure=failure,
        checks_not_run=not_run,
    )


def _checks(
    session: Session, run: Run, source: str, reached: Reached | None
) -> tuple[list[dict[str, object]], str | None, str | None]:
    """The source's restore checks, in the server started after the restore as its report
    says (127.0.0.1, its port), logged in as the source's dsn logs in (the restored cluster
    has production's roles); or why they could not run."""
    from medvault.service.hooks import checks_not_run, restore_checks

    if reached is None:
        return [], None, checks_not_run(session, run, source, "checks need --start")
    if reached.state == "shut down" or reached.port is None:
        why = "checks need a running server (it shut down at the target)"
        return [], None, checks_not_run(session, run, source, why)
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from medvault.config import PostgresSourceSettings
    from medvault.postgres.server import dsn_field

    settings = session.settings.source.get(source) if session.configured_sources() else None
    if not isinstance(settings, PostgresSourceSettings):
        return [], None, None
    login = {k: v for k, v in conninfo_to_dict(settings.dsn).items() if k != "hostaddr"}
    dsn = make_conninfo("", **(login | {"host": "127.0.0.1", "port": str(reached.port)}))
    database = dsn_field(settings.dsn, "dbname") or "postgres"
    checks, failure = restore_checks(session, run, source, dsn, database)
    return checks, failure, None


def _local_url(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def restore_command(session: Session, source: str, access: WalFetchAccess) -> str:
    """restore_command for the restored server: `medvault ... wal-fetch SOURCE %f %p` with
    everything needed to open the repository spelled out, because the server runs it
    without the caller's environment (no MEDVAULT_PASSWORD, no current directory)."""
    if access.program is None:
        raise UsageError(
            "cannot find the medvault program to put in restore_command; run medvault by its "
            "full path or put it on PATH"
        )
    args = [access.program]
    config = find_config(session.config)
    config_holds_credential = False
    if config is not None:
        args += ["--config", str(config.resolve())]
        url, repo_settings = session.repository_target(source)
        chosen = session.repository
        if chosen:
            args += ["--repo", chosen if chosen in session.settings.repository else _local_url(url)]
        config_holds_credential = repo_settings is not None and bool(
            repo_settings.key_file or repo_settings.password_file or repo_settings.password_command
        )
    else:
        url, _ = session.repository_target(source)
        args += ["--repo", _local_url(url)]
    credential = access.credential
    if credential.key_file:
        args += ["--key-file", os.path.abspath(credential.key_file)]
    elif credential.password_file:
        args += ["--password-file", os.path.abspath(credential.password_file)]
    elif credential.password_command:
        args += ["--password-command", credential.password_command]
    elif not config_holds_credential:
        raise UsageError(
            "the restored server fetches WAL with `medvault wal-fetch`, which must open the "
            "repository without your environment: use a config file whose [repository] "
            "section names key_file or password_file, or pass --key-file or --password-file"
        )
    args += ["wal-fetch", source]
    return " ".join(shlex.quote(a) for a in args) + " %f %p"


def server_environment(session: Session, source: str, access: WalFetchAccess) -> dict[str, str]:
    """What a server started after the restore carries for its restore_command beyond a
    minimal environment: the store's AWS variables for an S3 repository, its AZURE_STORAGE_*
    ones for an Azure repository."""
    from medvault import childenv

    url, repo_settings = session.repository_target(source)
    profile = repo_settings.profile if repo_settings is not None else None
    keys_in_config = repo_settings is not None and bool(
        repo_settings.access_key_id
        or repo_settings.account_key
        or repo_settings.sas_token
        or repo_settings.credential_file
    )
    return childenv.store_access(url, profile, keys_in_config, access.environment)


def _pg_bin(session: Session, source: str) -> str | None:
    from medvault.config import PostgresSourceSettings

    if not session.configured:
        return None
    settings = session.settings.source.get(source)
    return settings.pg_bin if isinstance(settings, PostgresSourceSettings) else None


def _postgres_source(session: Session, source: str | None) -> tuple[str, PostgresSourceSettings]:
    from medvault.config import PostgresSourceSettings

    if not session.configured:
        raise UsageError("mark needs a PostgreSQL source from medvault.toml (see --config)")
    sources = {
        name: s
        for name, s in session.settings.source.items()
        if isinstance(s, PostgresSourceSettings)
    }
    if source is None:
        if len(sources) != 1:
            names = ", ".join(sorted(sources)) or "none configured"
            raise UsageError(f"choose the PostgreSQL source with --source ({names})")
        source = next(iter(sources))
    if source not in sources:
        raise UsageError(f"{source!r} is not a PostgreSQL source in medvault.toml")
    return source, sources[source]
