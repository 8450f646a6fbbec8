"""`medvault restore`: files into a directory, a logical dump into a database, a physical
backup into a data directory (with point-in-time recovery). The snapshot's kind decides."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from medvault.cli.context import human_bytes, obtain, print_json, progress_bar, warn
from medvault.errors import UsageError

RECOVERY_TARGETS = ("immediate", "latest")


@dataclass(frozen=True)
class LogicalRestoreRequest:
    database: str | None
    tables: tuple[str, ...]
    schemas: tuple[str, ...]
    clean: bool
    list_only: bool
    as_json: bool


@dataclass(frozen=True)
class PhysicalRestoreRequest:
    pgdata: str
    target: str | None  # immediate | latest | None (latest unless a target_* is given)
    target_time: str | None
    target_lsn: str | None
    target_xid: str | None
    target_name: str | None
    target_action: str
    standby: bool
    start: bool
    port: int | None
    delta: bool
    force: bool
    keep_archiving: bool
    tablespace_map: tuple[str, ...]  # OID=DIR
    as_json: bool


def recovery_target_option(recovery_target: str | None, old_spelling: str | None) -> str | None:
    """--recovery-target, or --target immediate|latest as older versions spelled it (a
    warning says so: --target is the directory a files snapshot is restored into)."""
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
        warn(
            f"medvault: warning: --target {old_spelling} is spelled --recovery-target "
            f"{old_spelling} now (--target names the directory a files snapshot is restored into)"
        )
        recovery_target = old_spelling
    if recovery_target is not None and recovery_target not in RECOVERY_TARGETS:
        raise UsageError("--recovery-target is immediate or latest")
    return recovery_target


def restore(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id, prefix, latest or latest:SOURCE."),
    target: str | None = typer.Option(
        None, "--target", "-t", help="Files: the directory to restore into."
    ),
    recovery_target: str | None = typer.Option(
        None,
        "--recovery-target",
        help="PostgreSQL physical: immediate (end of the backup) or latest (all archived WAL).",
    ),
    includes: list[str] = typer.Option(
        [], "--include", help="Restore only this path (repeatable)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in the target."),
    keep_setuid: bool = typer.Option(
        False,
        "--keep-setuid/--no-setuid",
        help="Files: restore the setuid and setgid bits of files too (default: cleared, "
        "since whoever holds the key could have planted a setuid-root program).",
    ),
    database: str | None = typer.Option(
        None, "--database", "-d", help="Logical: restore into this database."
    ),
    tables: list[str] = typer.Option([], "--table", help="Logical: only this table (repeatable)."),
    schemas: list[str] = typer.Option(
        [], "--schema", help="Logical: only this schema (repeatable)."
    ),
    clean: bool = typer.Option(
        False, "--clean", help="Logical: drop objects before recreating them."
    ),
    list_only: bool = typer.Option(False, "--list", help="Logical: show what the dump holds."),
    pgdata: str | None = typer.Option(
        None, "--pgdata", help="Physical: the data directory to restore into."
    ),
    target_time: str | None = typer.Option(None, "--target-time", help="Recover up to a time."),
    target_lsn: str | None = typer.Option(None, "--target-lsn", help="Recover up to an LSN."),
    target_xid: str | None = typer.Option(
        None, "--target-xid", help="Recover up to a transaction id."
    ),
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
        False, "--delta", help="Physical: reuse a data directory, rewriting only what differs."
    ),
    force: bool = typer.Option(
        False, "--force", help="Physical: empty a non-empty data directory first."
    ),
    keep_archiving: bool = typer.Option(
        False,
        "--archive",
        help="Keep archive_command on in the restored cluster (it writes to the same archive).",
    ),
    tablespace_map: list[str] = typer.Option(
        [], "--tablespace", help="Physical: restore tablespace OID into DIR (OID=DIR)."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a snapshot: files, a logical dump, or a physical backup with PITR."""
    from medvault.recovery.files import include_parts

    for path in includes:
        include_parts(path)  # a bad one is refused before any passphrase is asked for
    cli = obtain(ctx)
    repo = cli.open()
    snap = repo.find_snapshot(snapshot)
    if recovery_target is not None and snap.kind != "postgres.physical":
        raise UsageError("--recovery-target applies to physical PostgreSQL snapshots only")
    if snap.kind == "postgres.logical":
        from medvault.cli.pg_logical import restore_logical_cmd

        restore_logical_cmd(
            cli,
            repo,
            snap,
            LogicalRestoreRequest(
                database, tuple(tables), tuple(schemas), clean, list_only, as_json
            ),
        )
        return
    if snap.kind == "postgres.physical":
        if pgdata is None:
            raise UsageError("a physical PostgreSQL snapshot is restored with --pgdata DIR")
        recovery_target = recovery_target_option(recovery_target, target)
        from medvault.cli.pg_recovery import restore_physical_cmd

        restore_physical_cmd(
            cli,
            repo,
            snap,
            PhysicalRestoreRequest(
                pgdata=pgdata,
                target=recovery_target,
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
            ),
            target_timeline,
        )
        return
    if target is None:
        raise UsageError("give the directory to restore into with --target DIR")
    from medvault.recovery.files import restore_files

    total = int(snap.stats.get("total_bytes", 0)) or None
    with progress_bar("restoring", total if not includes else None, not as_json) as advance:
        result = restore_files(
            repo,
            snap,
            target,
            includes=includes,
            overwrite=overwrite,
            on_progress=advance,
            keep_setuid=keep_setuid,
        )
    if result.setid_cleared:
        repo.warnings.append(
            f"{result.setid_cleared} file(s) restored without their setuid/setgid bits; "
            "restore them with --keep-setuid if you trust every client that writes this "
            "repository"
        )
    if as_json:
        print_json(
            {
                "snapshot": snap.id,
                "target": target,
                "files": result.files,
                "dirs": result.dirs,
                "symlinks": result.symlinks,
                "bytes_written": result.bytes_written,
                "duration_s": round(result.duration, 3),
                "skipped": result.skipped,
                "setid_cleared": result.setid_cleared,
            }
        )
        return
    print(
        f"restored snapshot {snap.short_id} to {target}: {result.files} files, "
        f"{result.dirs} directories, {result.symlinks} symlinks, "
        f"{human_bytes(result.bytes_written)} in {result.duration:.1f} s"
    )


def register(app: typer.Typer) -> None:
    app.command()(restore)
