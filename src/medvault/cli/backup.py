"""`medvault backup`."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

from medvault.cli.context import human_bytes, obtain, print_json, warn
from medvault.cli.progress import progress_once_started
from medvault.errors import EXIT_INCOMPLETE, ReplicationFailed

if TYPE_CHECKING:
    from medvault.service.backup import FilesBackupResult


def backup(
    ctx: typer.Context,
    targets: list[str] = typer.Argument(
        None, metavar="PATH|SOURCE...", help="Paths to back up, or a source from medvault.toml."
    ),
    source: str | None = typer.Option(
        None, "--source", "-s", help="Source name recorded in the snapshot (or a configured one)."
    ),
    tags: list[str] = typer.Option([], "--tag", help="Tag the snapshot (repeatable)."),
    backup_type: str = typer.Option(
        "incremental", "--type", help="full, incremental or differential."
    ),
    excludes: list[str] = typer.Option([], "--exclude", help="Skip names matching GLOB."),
    logical: bool = typer.Option(
        False, "--logical", help="PostgreSQL: a pg_dump of one database instead of the cluster."
    ),
    database: str | None = typer.Option(
        None, "--database", "-d", help="PostgreSQL --logical: the database (default: the DSN's)."
    ),
    tables: list[str] = typer.Option(
        [],
        "--table",
        help="PostgreSQL --logical: only tables matching PATTERN (pg_dump -t; repeatable).",
    ),
    exclude_tables: list[str] = typer.Option(
        [],
        "--exclude-table",
        help="PostgreSQL --logical: not tables matching PATTERN (pg_dump -T; repeatable).",
    ),
    dump_format: str | None = typer.Option(
        None,
        "--format",
        help="PostgreSQL --logical: custom (pg_dump's archive) or csv (one CSV per table).",
    ),
    method: str = typer.Option(
        "local",
        "--method",
        help="PostgreSQL physical: local (read the data directory) or stream (pg_basebackup).",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Files, PostgreSQL: report what would be read and how much is new; write nothing.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    no_verify: bool = typer.Option(False, "--no-verify-blobs", hidden=True),
) -> None:
    """Back up files and directories, or a configured source (files, PostgreSQL, Redis)."""
    from medvault.service.backup import (
        BackupOptions,
        FilesBackupResult,
        LogicalBackupResult,
        PhysicalBackupResult,
    )
    from medvault.service.backup import backup as back_up

    cli = obtain(ctx)
    options = BackupOptions(
        targets=tuple(targets or ()),
        source=source,
        backup_type=backup_type,
        tags=tuple(tags),
        excludes=tuple(excludes),
        logical=logical,
        database=database,
        method=method,
        tables=tuple(tables),
        exclude_tables=tuple(exclude_tables),
        format=dump_format,
        verify_blobs=not no_verify,
        # On a terminal a passphrase may be prompted for: before pg_dump starts, not while
        # it holds its snapshot open.
        open_repository_first=sys.stdin.isatty(),
    )
    if dry_run:
        from medvault.cli.dry_run import dry_run_backup

        dry_run_backup(cli.session, options, as_json)
        return
    with progress_once_started("dumping" if logical else "backing up", not as_json) as advance:
        result = back_up(cli.session, options, on_progress=advance)
    if isinstance(result, PhysicalBackupResult):
        from medvault.cli.pg_physical import report_physical_backup

        report_physical_backup(result, as_json)
    elif isinstance(result, LogicalBackupResult):
        from medvault.cli.pg_logical import report_logical_backup

        report_logical_backup(result, as_json)
    elif isinstance(result, FilesBackupResult):
        _report(result, as_json)
    else:
        from medvault.cli.redis_cmd import report_redis_backup

        report_redis_backup(result, as_json)
    if result.replication.error is not None:
        raise ReplicationFailed(result.replication.error)
    if not result.complete:
        raise typer.Exit(EXIT_INCOMPLETE)


def _report(result: FilesBackupResult, as_json: bool) -> None:
    snap = result.snapshot
    if as_json:
        print_json(
            {
                "snapshot": snap.id,
                "source": snap.source,
                "type": snap.backup_type,
                "parent": snap.parent,
                "files_new": result.files_new,
                "files_changed": result.files_changed,
                "files_unchanged": result.files_unchanged,
                "dirs": result.dirs,
                "bytes_read": result.bytes_read,
                "bytes_added": result.bytes_added,
                "duration_s": round(result.duration, 3),
                "complete": result.complete,
                "unreadable": [asdict(p) for p in result.unreadable],
                "changed_while_read": [asdict(p) for p in result.changed_while_read],
                "skipped": [asdict(p) for p in result.skipped],
            }
        )
        return
    for problem in result.unreadable:
        warn(f"warning: could not read {problem.path}: {problem.reason}")
    for problem in result.changed_while_read:
        warn(
            f"warning: {problem.path} changed while it was read; the copy in this "
            "snapshot may be inconsistent"
        )
    for problem in result.skipped:
        warn(f"note: skipped {problem.path}: {problem.reason}")
    parent = f", parent {snap.parent[:12]}" if snap.parent else ""
    print(
        f"snapshot {snap.short_id} saved ({snap.backup_type}{parent}): files "
        f"{result.files_new} new, {result.files_changed} changed, "
        f"{result.files_unchanged} unchanged; read {human_bytes(result.bytes_read)}, "
        f"added {human_bytes(result.bytes_added)} in {result.duration:.1f} s"
    )
    bad = len(result.unreadable) + len(result.changed_while_read)
    if bad:
        warn(
            f"warning: backup is incomplete: {bad} file(s) could not be read "
            "consistently (listed above)"
        )


def register(app: typer.Typer) -> None:
    app.command()(backup)
