"""`medvault backup --dry-run`: what a backup would read and add, nothing written."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

from medvault.cli.context import human_bytes, print_json, warn
from medvault.cli.progress import progress_once_started
from medvault.errors import EXIT_INCOMPLETE

if TYPE_CHECKING:
    from medvault.service.backup import BackupOptions
    from medvault.service.session import Session


def dry_run_backup(session: Session, options: BackupOptions, as_json: bool) -> None:
    from medvault.service.backup import backup_dry_run

    with progress_once_started("reading", not as_json) as advance:
        found = backup_dry_run(session, options, on_progress=advance)
    if as_json:
        doc = asdict(found)
        doc["duration"] = round(found.duration, 3)
        print_json(doc)
    else:
        for problem in found.unreadable:
            warn(f"warning: could not read {problem.path}: {problem.reason}")
        for problem in found.skipped:
            warn(f"note: would skip {problem.path}: {problem.reason}")
        parent = f", parent {found.parent[:12]}" if found.parent else ""
        if found.kind == "redis":
            print(
                f"dry run of a Redis backup of {found.source}: an RDB of "
                f"{human_bytes(found.bytes_total)}"
            )
        elif found.database is not None:
            what = "CSV export" if found.kind == "postgres.csv" else "logical backup"
            print(
                f"dry run of a {what} of {found.source}: database {found.database}, "
                f"{found.tables} tables, {found.rows} rows ({human_bytes(found.bytes_total)})"
            )
        else:
            what = "physical backup" if found.kind == "postgres.physical" else "backup"
            print(
                f"dry run of a {found.backup_type} {what} of {found.source}{parent}: files "
                f"{found.files_new} new, {found.files_changed} changed, {found.files_unchanged} "
                f"unchanged in {found.dirs} directories ({human_bytes(found.bytes_total)})"
            )
        print(
            f"would read {human_bytes(found.bytes_read)}; new to the repository "
            f"{human_bytes(found.bytes_new)} in {found.blobs_new} blobs, "
            f"{human_bytes(found.bytes_added)} once compressed and sealed; nothing was written"
        )
        for note in found.notes:
            print(f"note: {note}")
    if found.unreadable:
        raise typer.Exit(EXIT_INCOMPLETE)
