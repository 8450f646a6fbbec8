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

from medvault.cli.context import human_bytes, obtain, print_json, progress_bar, warn

if TYPE_CHECKING:
    from medvault.service.pitr import BaseBackup, PhysicalRestoreResult, RecoverySetup


def _medvault_executable() -> str | None:
    """This very program, by absolute path: the server runs restore_command without our
    PATH or virtualenv. None when it cannot be found (the service says what to do)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0).startswith("medvault"):
        found = shutil.which(argv0) if os.sep not in argv0 else argv0
        if found and os.access(found, os.X_OK):
            return os.path.abspath(found)
    beside = Path(sys.executable).parent / "medvault"
    if os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which("medvault")
    return None if on_path is None else os.path.abspath(on_path)


def recovery_setup(ctx: typer.Context, recovery_target: str | None) -> RecoverySetup:
    """The recovery options of `restore` and `pitr` (the same names in both commands), with
    what the restored server's `medvault wal-fetch` needs from this shell: this program's
    path, the credential it was given (by option, else by environment) and the environment
    (an S3 store's variables)."""
    from medvault.credentials import CredentialOptions
    from medvault.service.pitr import RecoverySetup, WalFetchAccess

    given = obtain(ctx).credentials
    params = ctx.params
    environ = os.environ
    access = WalFetchAccess(
        program=_medvault_executable(),
        credential=CredentialOptions(
            password_file=given.password_file or environ.get("MEDVAULT_PASSWORD_FILE"),
            password_command=given.password_command or environ.get("MEDVAULT_PASSWORD_COMMAND"),
            key_file=given.key_file or environ.get("MEDVAULT_KEY_FILE"),
        ),
        environment=dict(environ),
    )
    return RecoverySetup(
        recovery_target=recovery_target,
        target_time=params["target_time"],
        target_lsn=params["target_lsn"],
        target_xid=params["target_xid"],
        target_name=params["target_name"],
        target_action=params["target_action"],
        target_timeline=params["target_timeline"],
        standby=params["standby"],
        start=params["start"],
        port=params["port"],
        delta=params["delta"],
        force=params["force"],
        keep_archiving=params["keep_archiving"],
        tablespaces=tuple(params["tablespace_map"]),
        wal_fetch=access,
    )


def report_physical(result: PhysicalRestoreResult, as_json: bool) -> None:
    files = result.written
    target = result.target
    reached = result.reached
    if as_json:
        doc: dict[str, Any] = {
            "snapshot": result.snapshot_id,
            "source": result.source,
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
            "checks": list(result.checks),
            "checks_not_run": result.checks_not_run,
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
        f"restored snapshot {result.short_id} ({result.pg_version}) to "
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
        _report_checks(result)
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
    _report_checks(result)


def _report_checks(result: PhysicalRestoreResult) -> None:
    for check in result.checks:
        print(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")
    if result.checks_not_run is not None:
        print(f"restore checks not run: {result.checks_not_run}")


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
    reason: str | None = typer.Option(
        None, "--reason", help="Why (a ticket, an incident): kept in the run's audit record."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Point-in-time recovery of SOURCE: the base backup is chosen for the target."""
    from medvault.service.pitr import PitrOptions, resolve_recovery_target
    from medvault.service.pitr import pitr as recover

    cli = obtain(ctx)
    recovery_target, notice = resolve_recovery_target(recovery_target, target)
    if notice is not None:
        warn(f"medvault: warning: {notice}")

    def chosen(base: BaseBackup) -> None:
        if not as_json:
            print(f"base backup: {base.short_id} (consistent at {base.consistent_at})")

    result = recover(
        cli.session,
        PitrOptions(
            source=source,
            pgdata=pgdata,
            reason=reason,
            # The recovery options above, by name from ctx.params.
            recovery=recovery_setup(ctx, recovery_target),
        ),
        on_chosen=chosen,
        progress=lambda total: progress_bar("restoring", total, not as_json),
    )
    report_physical(result, as_json)
    from medvault.cli.restore import exit_after_restore

    exit_after_restore(result)


# -- mark -------------------------------------------------------------------------------


def mark(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The restore point's name (1-63 bytes)."),
    source: str | None = typer.Option(None, "--source", "-s", help="The PostgreSQL source."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a named restore point to recover to later with --target-name NAME."""
    from medvault.service.pitr import MarkOptions
    from medvault.service.pitr import mark as create_mark

    point = create_mark(obtain(ctx).session, MarkOptions(name=name, source=source))
    if as_json:
        print_json(
            {
                "name": point.name,
                "source": point.source,
                "lsn": point.lsn,
                "wal": point.wal,
                "time": point.time,
            }
        )
        return
    print(
        f"restore point {point.name!r} of {point.source} at LSN {point.lsn} (WAL {point.wal}, "
        f"{point.time}); WAL switched so it reaches the archive now"
    )


def register(app: typer.Typer) -> None:
    app.command()(pitr)
    app.command()(mark)
