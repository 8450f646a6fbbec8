"""`medvault restore`: files into a directory, a logical dump into a database, a physical
backup into a data directory (with point-in-time recovery). The snapshot's kind decides."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from medvault.cli.context import human_bytes, obtain, print_json, progress_bar

if TYPE_CHECKING:
    from medvault.service.restore import FilesRestoreResult


def restore(
    ctx: typer.Context,
    snapshot: str = typer.Argument(
        ..., help="Snapshot id, prefix, latest[:SOURCE], verified[:SOURCE] or random:30d[:SOURCE]."
    ),
    target: str | None = typer.Option(
        None,
        "--target",
        "-t",
        help="Files: the directory to restore into. CSV: write the CSV files there.",
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
    tables: list[str] = typer.Option(
        [], "--table", help="Logical and CSV: only this table (repeatable)."
    ),
    schemas: list[str] = typer.Option(
        [], "--schema", help="Logical: only this schema (repeatable)."
    ),
    clean: bool = typer.Option(
        False, "--clean", help="Logical: drop objects before recreating them."
    ),
    list_only: bool = typer.Option(False, "--list", help="Logical: show what the dump holds."),
    append: bool = typer.Option(
        False, "--append", help="CSV: load into tables that hold rows already."
    ),
    into: str | None = typer.Option(
        None, "--into", help="Logical: restore the one --table as this new SCHEMA.TABLE."
    ),
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
        False,
        "--force",
        help="Physical: empty a non-empty data directory first. Redis: replace --rdb-file.",
    ),
    redis_url: str | None = typer.Option(
        None, "--redis-url", help="Redis: restore into this running server (redis://HOST:PORT)."
    ),
    redis_password_file: str | None = typer.Option(
        None,
        "--redis-password-file",
        help="Redis: the target's password (default: the source's password_file).",
    ),
    flush: bool = typer.Option(
        False, "--flush", help="Redis: remove every key of the target first (FLUSHALL)."
    ),
    replace_keys: bool = typer.Option(
        False, "--replace", help="Redis: overwrite keys of the same name in the target."
    ),
    rdb_file: str | None = typer.Option(
        None, "--rdb-file", help="Redis: write the RDB here (mode 0600), for a stopped server."
    ),
    keep_archiving: bool = typer.Option(
        False,
        "--archive",
        help="Keep archive_command on in the restored cluster (it writes to the same archive).",
    ),
    tablespace_map: list[str] = typer.Option(
        [], "--tablespace", help="Physical: restore tablespace OID into DIR (OID=DIR)."
    ),
    reason: str | None = typer.Option(
        None, "--reason", help="Why (a ticket, an incident): kept in the run's audit record."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a snapshot: files, a logical dump, a physical backup with PITR, or Redis."""
    from medvault.cli.pg_recovery import recovery_setup
    from medvault.service.pitr import PhysicalRestoreResult
    from medvault.service.redis import RedisRestoreOptions, RedisRestoreResult
    from medvault.service.restore import CsvRestoreResult, FilesRestoreResult, RestoreOptions
    from medvault.service.restore import restore as restore_snapshot

    cli = obtain(ctx)
    result = restore_snapshot(
        cli.session,
        RestoreOptions(
            snapshot=snapshot,
            reason=reason,
            target=target,
            includes=tuple(includes),
            overwrite=overwrite,
            keep_setuid=keep_setuid,
            database=database,
            tables=tuple(tables),
            schemas=tuple(schemas),
            clean=clean,
            list_only=list_only,
            append=append,
            into=into,
            pgdata=pgdata,
            # The recovery options above, by name from ctx.params.
            recovery=recovery_setup(ctx, recovery_target),
            redis=RedisRestoreOptions(
                redis_url, redis_password_file, flush, replace_keys, rdb_file, force
            )
            if redis_url or rdb_file or flush or replace_keys
            else None,
        ),
        progress=lambda total: progress_bar("restoring", total, not as_json),
    )
    if isinstance(result, PhysicalRestoreResult):
        from medvault.cli.pg_recovery import report_physical

        report_physical(result, as_json)
    elif isinstance(result, FilesRestoreResult):
        _report_files(result, as_json)
    elif isinstance(result, CsvRestoreResult):
        from medvault.cli.pg_logical import report_csv_restore

        report_csv_restore(result, as_json)
    elif isinstance(result, RedisRestoreResult):
        from medvault.cli.redis_cmd import report_redis_restore

        report_redis_restore(result, as_json)
    else:
        from medvault.cli.pg_logical import restore_logical_cmd

        restore_logical_cmd(result, as_json)
    exit_after_restore(result)


def exit_after_restore(result: object) -> None:
    """The data is back either way: a failed smoke check fails the command (`restore`,
    `pitr`), a failed after_restore hook makes it incomplete (the session's warnings name
    both)."""
    failure = getattr(result, "check_failure", None)
    if failure:
        from medvault.errors import RestoreCheckFailed

        raise RestoreCheckFailed(failure)
    if getattr(result, "hook_problem", None):
        from medvault.errors import EXIT_INCOMPLETE

        raise typer.Exit(EXIT_INCOMPLETE)


def _report_files(result: FilesRestoreResult, as_json: bool) -> None:
    written = result.written
    if as_json:
        print_json(
            {
                "snapshot": result.snapshot_id,
                "target": result.target,
                "files": written.files,
                "dirs": written.dirs,
                "symlinks": written.symlinks,
                "bytes_written": written.bytes_written,
                "duration_s": round(written.duration, 3),
                "skipped": list(written.skipped),
                "setid_cleared": written.setid_cleared,
            }
        )
        return
    print(
        f"restored snapshot {result.short_id} to {result.target}: {written.files} files, "
        f"{written.dirs} directories, {written.symlinks} symlinks, "
        f"{human_bytes(written.bytes_written)} in {written.duration:.1f} s"
    )


def register(app: typer.Typer) -> None:
    app.command()(restore)
