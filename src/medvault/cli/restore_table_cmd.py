"""`medvault restore-table SOURCE SCHEMA.TABLE --as-of TIME --into SCHEMA.NEW`: one table as
it was at a moment, recovered in scratch space and copied into a new table (or a file)."""

from __future__ import annotations

import typer

from medvault.cli.context import human_bytes, obtain, print_json


def restore_table(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="The PostgreSQL source from medvault.toml."),
    table: str = typer.Argument(
        ..., help='SCHEMA.TABLE as SQL spells it (quote names: \'"Klinik"."Verordnungen"\').'
    ),
    as_of: str = typer.Option(
        ..., "--as-of", help='The moment, e.g. "2026-03-01 10:13:00+00" (no zone: local time).'
    ),
    into: str | None = typer.Option(
        None, "--into", help="SCHEMA.NEW_TABLE to create in the database (never replaced)."
    ),
    database: str | None = typer.Option(
        None, "--database", "-d", help="The database holding the table (default: the dsn's)."
    ),
    to_file: str | None = typer.Option(
        None, "--to-file", help="Write the table to this new file (mode 0600) instead."
    ),
    file_format: str | None = typer.Option(
        None, "--format", help="For --to-file: csv (default) or custom (pg_dump -Fc)."
    ),
    scratch: str | None = typer.Option(
        None, "--scratch", help="Where the scratch copy goes (default: [drill] scratch)."
    ),
    reason: str | None = typer.Option(
        None, "--reason", help="Why (a ticket, an incident): kept in the run's audit record."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recover TABLE of SOURCE as of a moment into a new table, leaving the rest running."""
    from medvault.service.restore_table import RestoreTableOptions
    from medvault.service.restore_table import restore_table as run_restore_table

    def chosen(short_id: str, consistent_at: str) -> None:
        if not as_json:
            print(f"base backup: {short_id} (consistent at {consistent_at})")

    result = run_restore_table(
        obtain(ctx).session,
        RestoreTableOptions(
            source=source,
            table=table,
            as_of=as_of,
            into=into,
            database=database,
            to_file=to_file,
            file_format=file_format,
            scratch=scratch,
            reason=reason,
        ),
        on_chosen=chosen,
    )
    if as_json:
        print_json(
            {
                "source": result.source,
                "table": result.table,
                "database": result.database,
                "snapshot": result.snapshot_id,
                "as_of": result.as_of,
                "reached": {"time": result.reached_time, "lsn": result.reached_lsn},
                "into": result.into,
                "file": result.file,
                "format": result.file_format,
                "rows": result.rows,
                "bytes": result.bytes,
                "columns": list(result.columns),
                "left_out_defaults": list(result.left_out_defaults),
                "recovery_s": result.recovery_s,
                "copy_s": result.copy_s,
                "duration_s": result.duration,
            }
        )
        return
    where = (
        f"into {result.into} in database {result.database}"
        if result.into is not None
        else f"to {result.file} ({result.file_format})"
    )
    print(
        f"restored {result.table} as of {result.as_of} {where}: {result.rows} rows, "
        f"{human_bytes(result.bytes)}"
    )
    print(
        f"recovery point: last transaction replayed at {result.reached_time or 'none'} "
        f"(LSN {result.reached_lsn})"
    )
    print(
        f"took {result.duration:.1f} s (recovery {result.recovery_s:.1f} s, copy "
        f"{result.copy_s:.1f} s); the scratch copy is removed"
    )
    if result.left_out_defaults:
        print(
            "defaults left out (they use a sequence or a function of the database): "
            + ", ".join(result.left_out_defaults)
        )


def register(app: typer.Typer) -> None:
    app.command("restore-table")(restore_table)
