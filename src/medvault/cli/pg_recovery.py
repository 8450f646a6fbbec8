"""PostgreSQL recovery commands: `restore SNAP --pgdata DIR` for a physical snapshot,
`pitr SOURCE` (the base backup chosen for the target), and `mark NAME` (a restore point)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medvault.cli.context import CliContext, human_bytes, obtain, print_json, progress_bar
from medvault.configfile import find_config
from medvault.errors import UsageError
from medvault.postgres.facts import PhysicalFacts

if TYPE_CHECKING:
    from medvault.cli.restore import PhysicalRestoreRequest
    from medvault.config import PostgresSourceSettings
    from medvault.recovery.postgres import PhysicalRestoreResult, RecoveryTarget
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository


def _medvault_executable() -> str:
    """This very program, by absolute path: the server runs restore_command without our
    PATH or virtualenv."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0).startswith("medvault"):
        found = shutil.which(argv0) if os.sep not in argv0 else argv0
        if found and os.access(found, os.X_OK):
            return os.path.abspath(found)
    beside = Path(sys.executable).parent / "medvault"
    if os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which("medvault")
    if on_path is None:
        raise UsageError(
            "cannot find the medvault program to put in restore_command; run medvault by its "
            "full path or put it on PATH"
        )
    return os.path.abspath(on_path)


def _local_url(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def restore_command(cli: CliContext, source: str) -> str:
    """restore_command for the restored server: `medvault ... wal-fetch SOURCE %f %p` with
    everything needed to open the repository spelled out, because the server runs it
    without this shell's environment (no MEDVAULT_PASSWORD, no current directory)."""
    args = [_medvault_executable()]
    config = find_config(cli.config_option)
    config_holds_credential = False
    if config is not None:
        args += ["--config", str(config.resolve())]
        url, repo_settings = cli.repository_target(source)
        if cli.repo_option:
            args += [
                "--repo",
                cli.repo_option if cli.repo_option in cli.settings.repository else _local_url(url),
            ]
        config_holds_credential = repo_settings is not None and bool(
            repo_settings.key_file or repo_settings.password_file or repo_settings.password_command
        )
    else:
        url, _ = cli.repository_target(source)
        args += ["--repo", _local_url(url)]
    creds = cli.credentials
    key_file = creds.key_file or os.environ.get("MEDVAULT_KEY_FILE")
    password_file = creds.password_file or os.environ.get("MEDVAULT_PASSWORD_FILE")
    password_command = creds.password_command or os.environ.get("MEDVAULT_PASSWORD_COMMAND")
    if key_file:
        args += ["--key-file", os.path.abspath(key_file)]
    elif password_file:
        args += ["--password-file", os.path.abspath(password_file)]
    elif password_command:
        args += ["--password-command", password_command]
    elif not config_holds_credential:
        raise UsageError(
            "the restored server fetches WAL with `medvault wal-fetch`, which must open the "
            "repository without your environment: use a config file whose [repository] "
            "section names key_file or password_file, or pass --key-file or --password-file"
        )
    args += ["wal-fetch", source]
    return " ".join(shlex.quote(a) for a in args) + " %f %p"


def server_environment(cli: CliContext, source: str) -> dict[str, str]:
    """What a server started with --start carries for its restore_command beyond a minimal
    environment: the store's AWS variables for an S3 repository (childenv.store_access)."""
    from medvault import childenv

    url, repo_settings = cli.repository_target(source)
    profile = repo_settings.profile if repo_settings is not None else None
    keys_in_config = repo_settings is not None and bool(repo_settings.access_key_id)
    return childenv.store_access(url, profile, keys_in_config)


def _pg_bin(cli: CliContext, source: str) -> str | None:
    from medvault.config import PostgresSourceSettings

    if find_config(cli.config_option) is None:
        return None
    settings = cli.settings.source.get(source)
    return settings.pg_bin if isinstance(settings, PostgresSourceSettings) else None


def restore_physical_cmd(
    cli: CliContext,
    repo: Repository,
    snap: Snapshot,
    req: PhysicalRestoreRequest,
    target_timeline: str = "latest",
    recovery: RecoveryTarget | None = None,
) -> None:
    """`medvault restore SNAP --pgdata DIR ...` for a postgres.physical snapshot."""
    from medvault.recovery.postgres import (
        PhysicalRestoreOptions,
        make_target,
        parse_tablespace_options,
        restore_physical,
    )

    target = recovery or make_target(
        target=req.target,
        time_=req.target_time,
        lsn=req.target_lsn,
        xid=req.target_xid,
        name=req.target_name,
        action=req.target_action,
        timeline=target_timeline,
    )
    if req.delta and req.force:
        raise UsageError("--delta and --force exclude each other")
    if req.standby and target.kind != "latest":
        raise UsageError("--standby follows the archive without a recovery target")
    options = PhysicalRestoreOptions(
        pgdata=req.pgdata,
        target=target,
        restore_command=restore_command(cli, snap.source),
        standby=req.standby,
        port=req.port,
        delta=req.delta,
        force=req.force,
        keep_archiving=req.keep_archiving,
        tablespaces=parse_tablespace_options(req.tablespace_map),
        start=req.start,
        pg_bin=_pg_bin(cli, snap.source),
        server_environment=server_environment(cli, snap.source) if req.start else {},
    )
    total = int(snap.stats.get("total_bytes", 0)) or None
    with progress_bar("restoring", total, not req.as_json) as advance:
        result = restore_physical(repo, snap, options, advance)
    _report(snap, target, result, req.as_json)


def _report(
    snap: Snapshot, target: RecoveryTarget, result: PhysicalRestoreResult, as_json: bool
) -> None:
    files = result.files
    reached = result.reached
    if as_json:
        doc: dict[str, Any] = {
            "snapshot": snap.id,
            "source": snap.source,
            "pgdata": result.pgdata,
            "files": files.files,
            "files_unchanged": files.files_unchanged,
            "removed": files.removed,
            "dirs": files.dirs,
            "symlinks": files.symlinks,
            "bytes_written": files.bytes_written,
            "duration_s": round(files.duration, 3),
            "tablespaces": result.tablespaces,
            "target": {
                "kind": target.kind,
                "value": target.value or None,
                "action": target.action,
                "timeline": target.timeline,
            },
            "wal": {
                "timeline": result.wal.timeline,
                "first": result.wal.first,
                "last": result.wal.last,
            },
            "signal": result.signal,
            "reached": None,
        }
        if reached is not None:
            doc["reached"] = {
                "state": reached.state,
                "lsn": reached.lsn,
                "time": reached.time,
                "timeline": reached.timeline,
                "port": reached.port,
                "stop": reached.stop_reason,
                "log": reached.log,
            }
        print_json(doc)
        return
    unchanged = f", {files.files_unchanged} unchanged" if files.files_unchanged else ""
    removed = f", {files.removed} removed" if files.removed else ""
    print(
        f"restored snapshot {snap.short_id} ({PhysicalFacts.of(snap).pg_version}) to "
        f"{result.pgdata}: {files.files} files written{unchanged}{removed}, "
        f"{human_bytes(files.bytes_written)} in {files.duration:.1f} s"
    )
    for oid, location in result.tablespaces.items():
        print(f"tablespace {oid} restored to {location}")
    print(
        f"recovery: target {target.describe()} on timeline {target.timeline}, WAL "
        f"{result.wal.first} .. {result.wal.last} archived; {result.signal} written"
    )
    if reached is None:
        print(f"start it with: pg_ctl -D {shlex.quote(result.pgdata)} start")
        return
    where = f"LSN {reached.lsn or '?'}"
    when = f", time {reached.time}" if reached.time else ""
    tli = f", timeline {reached.timeline}" if reached.timeline else ""
    state = {
        "promoted": f"promoted; running on port {reached.port}",
        "paused": f"replay paused at the target; running on port {reached.port}",
        "standby": f"running as a standby on port {reached.port}",
        "shut down": "shut down at the target",
    }[reached.state]
    print(f"recovered to {where}{when}{tli}: {state}")
    if reached.stop_reason:
        print(f"server: {reached.stop_reason}")


# -- pitr -------------------------------------------------------------------------------


def pitr(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="The PostgreSQL source from medvault.toml."),
    pgdata: str = typer.Option(..., "--pgdata", help="The data directory to restore into."),
    recovery_target: str | None = typer.Option(
        None,
        "--recovery-target",
        help="immediate (end of the backup) or latest (all archived WAL).",
    ),
    target: str | None = typer.Option(
        None, "--target", hidden=True, help="Older spelling of --recovery-target."
    ),
    target_time: str | None = typer.Option(None, "--target-time", help="Recover up to a time."),
    target_lsn: str | None = typer.Option(None, "--target-lsn", help="Recover up to an LSN."),
    target_xid: str | None = typer.Option(None, "--target-xid", help="Recover up to an xid."),
    target_name: str | None = typer.Option(
        None, "--target-name", help="Recover up to a restore point (see `medvault mark`)."
    ),
    target_action: str = typer.Option(
        "promote", "--target-action", help="At the target: promote, pause or shutdown."
    ),
    target_timeline: str = typer.Option(
        "latest", "--target-timeline", help="latest, current (the backup's) or a number."
    ),
    standby: bool = typer.Option(False, "--standby", help="Set the cluster up as a standby."),
    start: bool = typer.Option(
        False, "--start", help="Start the restored cluster and wait for recovery to finish."
    ),
    port: int | None = typer.Option(None, "--port", help="Port for the restored cluster."),
    delta: bool = typer.Option(
        False, "--delta", help="Reuse a data directory of this cluster, rewriting what differs."
    ),
    force: bool = typer.Option(False, "--force", help="Empty a non-empty data directory first."),
    keep_archiving: bool = typer.Option(
        False,
        "--archive",
        help="Keep archive_command on in the restored cluster (it writes to the same archive).",
    ),
    tablespace_map: list[str] = typer.Option(
        [], "--tablespace", help="Restore tablespace OID into DIR (OID=DIR)."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Point-in-time recovery of SOURCE: the base backup is chosen for the target."""
    from medvault.cli.restore import PhysicalRestoreRequest, recovery_target_option
    from medvault.recovery.postgres import choose_base_backup, make_target

    cli = obtain(ctx)
    target = recovery_target_option(recovery_target, target)
    recovery = make_target(
        target=target,
        time_=target_time,
        lsn=target_lsn,
        xid=target_xid,
        name=target_name,
        action=target_action,
        timeline=target_timeline,
    )
    repo = cli.open(source)
    snap = choose_base_backup(repo, source, recovery)
    if not as_json:
        print(f"base backup: {snap.short_id} (consistent at {PhysicalFacts.of(snap).stop_time})")
    req = PhysicalRestoreRequest(
        pgdata=pgdata,
        target=target,
        target_time=target_time,
        target_lsn=target_lsn,
        target_xid=target_xid,
        target_name=target_name,
        target_action=target_action,
        standby=standby,
        start=start,
        port=port,
        delta=delta,
        force=force,
        keep_archiving=keep_archiving,
        tablespace_map=tuple(tablespace_map),
        as_json=as_json,
    )
    restore_physical_cmd(cli, repo, snap, req, target_timeline, recovery)


# -- mark -------------------------------------------------------------------------------


def _postgres_source(cli: CliContext, source: str | None) -> tuple[str, PostgresSourceSettings]:
    from medvault.config import PostgresSourceSettings

    if find_config(cli.config_option) is None:
        raise UsageError("mark needs a PostgreSQL source from medvault.toml (see --config)")
    sources = {
        name: s for name, s in cli.settings.source.items() if isinstance(s, PostgresSourceSettings)
    }
    if source is None:
        if len(sources) != 1:
            names = ", ".join(sorted(sources)) or "none configured"
            raise UsageError(f"choose the PostgreSQL source with --source ({names})")
        source = next(iter(sources))
    if source not in sources:
        raise UsageError(f"{source!r} is not a PostgreSQL source in medvault.toml")
    return source, sources[source]


def mark(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The restore point's name (1-63 bytes)."),
    source: str | None = typer.Option(None, "--source", "-s", help="The PostgreSQL source."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a named restore point to recover to later with --target-name NAME."""
    from medvault.recovery.postgres import create_restore_point

    cli = obtain(ctx)
    source, settings = _postgres_source(cli, source)
    point = create_restore_point(settings.dsn, name, what=f"PostgreSQL source {source}")
    if as_json:
        print_json(
            {
                "name": point.name,
                "source": source,
                "lsn": point.lsn,
                "wal": point.wal,
                "time": point.time,
            }
        )
        return
    print(
        f"restore point {point.name!r} of {source} at LSN {point.lsn} (WAL {point.wal}, "
        f"{point.time}); WAL switched so it reaches the archive now"
    )


def register(app: typer.Typer) -> None:
    app.command()(pitr)
    app.command()(mark)
