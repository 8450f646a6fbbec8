"""`medvault backup`."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

from medvault.cli.context import human_bytes, obtain, print_json, progress_bar, warn
from medvault.errors import EXIT_INCOMPLETE, UsageError

if TYPE_CHECKING:
    from medvault.sources.files import BackupResult

DEFAULT_SOURCE = "files"


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
    method: str = typer.Option(
        "local",
        "--method",
        help="PostgreSQL physical: local (read the data directory) or stream (pg_basebackup).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    no_verify: bool = typer.Option(False, "--no-verify-blobs", hidden=True),
) -> None:
    """Back up files and directories, or a configured source (files or PostgreSQL)."""
    from medvault.config import PostgresSourceSettings
    from medvault.sources.files import BACKUP_TYPES, BackupOptions, backup_files

    cli = obtain(ctx)
    if backup_type not in BACKUP_TYPES:
        raise UsageError(f"--type must be one of {', '.join(BACKUP_TYPES)}, not {backup_type!r}")
    targets = list(targets or [])
    configured = cli.configured_sources()
    name = source
    if len(targets) == 1 and source is None and targets[0] in configured:
        name, targets = targets[0], []
    if name is not None and name in configured and not targets:
        settings = cli.settings.source[name]
        if isinstance(settings, PostgresSourceSettings):
            if logical:
                from medvault.cli.pg_logical import backup_logical_cmd

                backup_logical_cmd(cli, name, settings, database, tuple(tags), as_json)
            else:
                from medvault.cli.pg_physical import backup_physical_cmd

                backup_physical_cmd(cli, name, settings, backup_type, method, tuple(tags), as_json)
            return
        options = BackupOptions(
            source=name,
            paths=list(settings.paths),
            backup_type=backup_type,
            tags=tuple(dict.fromkeys([*settings.tags, *tags])),
            excludes=tuple([*settings.exclude, *excludes]),
            tier=settings.tier,
            verify=not no_verify,
        )
    else:
        if logical or database:
            raise UsageError("--logical and --database need a PostgreSQL source from medvault.toml")
        if not targets:
            raise UsageError("nothing to back up: give paths, or a source from medvault.toml")
        options = BackupOptions(
            source=name or DEFAULT_SOURCE,
            paths=targets,
            backup_type=backup_type,
            tags=tuple(tags),
            excludes=tuple(excludes),
            verify=not no_verify,
        )
    repo = cli.open(options.source)
    if repo.local_path:
        # Backing up / (or any tree holding the repository) must not copy the repository
        # into itself, snapshot after snapshot.
        options.skip_paths = (*options.skip_paths, repo.local_path)
    with progress_bar("backing up", None, not as_json) as advance:
        result = backup_files(repo, options, on_progress=advance)
    _report(result, as_json)
    from medvault.cli.replication import replicate_snapshot

    replicate_snapshot(cli, repo, result.snapshot.id, options.source)
    if not result.complete:
        raise typer.Exit(EXIT_INCOMPLETE)


def _report(result: BackupResult, as_json: bool) -> None:
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
    if not result.complete:
        bad = len(result.unreadable) + len(result.changed_while_read)
        warn(
            f"warning: backup is incomplete: {bad} file(s) could not be read "
            "consistently (listed above)"
        )


def register(app: typer.Typer) -> None:
    app.command()(backup)
