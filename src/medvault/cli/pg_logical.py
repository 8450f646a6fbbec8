"""`medvault backup SOURCE --logical` (its report; the work is service/backup.py's) and
`medvault restore SNAP` of a logical snapshot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvault.cli.context import human_bytes, print_json, progress_bar
from medvault.errors import UsageError
from medvault.postgres.facts import LogicalFacts

if TYPE_CHECKING:
    from medvault.cli.context import CliContext
    from medvault.cli.restore import LogicalRestoreRequest
    from medvault.config import PostgresSourceSettings
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.service.backup import LogicalBackupResult


def _tables(count: int) -> str:
    return f"{count} table" if count == 1 else f"{count} tables"


def report_logical_backup(result: LogicalBackupResult, as_json: bool) -> None:
    snap = result.snapshot
    if as_json:
        print_json(
            {
                "snapshot": snap.id,
                "source": snap.source,
                "kind": snap.kind,
                "database": result.database,
                "tables": result.tables,
                "rows": result.rows,
                "bytes_read": result.bytes_read,
                "bytes_added": result.bytes_added,
                "duration_s": round(result.duration, 3),
                "row_counts": dict(result.row_counts),
            }
        )
        return
    print(
        f"snapshot {snap.short_id} saved (logical, database {result.database}): "
        f"{_tables(result.tables)}, {result.rows} rows, {human_bytes(result.bytes_read)} dump, "
        f"added {human_bytes(result.bytes_added)} in {result.duration:.1f} s"
    )


def _source_settings(cli: CliContext, snap: Snapshot) -> PostgresSourceSettings:
    """The server to restore to: the snapshot's source in medvault.toml."""
    from medvault.config import PostgresSourceSettings

    settings = cli.settings.source.get(snap.source) if cli.configured_sources() else None
    if not isinstance(settings, PostgresSourceSettings):
        raise UsageError(
            f"snapshot {snap.short_id} comes from source {snap.source}, which medvault.toml "
            f"does not define as PostgreSQL; add [source.{snap.source}] with kind = "
            '"postgres" and the dsn of the server to restore into'
        )
    return settings


def _list(cli: CliContext, repo: Repository, snap: Snapshot, as_json: bool) -> None:
    from medvault.recovery.postgres_logical import list_logical

    pg_bin = None
    if snap.source in cli.configured_sources():
        pg_bin = getattr(cli.settings.source[snap.source], "pg_bin", None)
    toc = list_logical(repo, snap, pg_bin=pg_bin)
    facts = LogicalFacts.of(snap)
    counts = dict(facts.row_counts)
    if as_json:
        print_json(
            {
                "snapshot": snap.id,
                "database": facts.database,
                "snapshot_time": facts.snapshot_time,
                "toc": toc,
                "row_counts": counts,
            }
        )
        return
    for line in toc:
        print(line)
    # Comment lines (';'), so the output still works as a pg_restore -L list.
    print(";")
    print(f"; Row counts recorded at backup (snapshot {snap.short_id}, {len(counts)} tables):")
    width = max((len(k) for k in counts), default=0)
    for key, rows in counts.items():
        print(f";   {key:<{width}}  {rows}")


def restore_logical_cmd(
    cli: CliContext, repo: Repository, snap: Snapshot, req: LogicalRestoreRequest
) -> None:
    if req.list_only:
        _list(cli, repo, snap, req.as_json)
        return
    if not req.database:
        raise UsageError(
            "give the database to restore into with --database NAME (it is created when missing)"
        )
    from medvault.recovery.postgres_logical import restore_logical

    settings = _source_settings(cli, snap)
    total = int(snap.stats.get("total_bytes", 0)) or None
    with progress_bar("restoring", total, not req.as_json) as advance:
        result = restore_logical(
            repo,
            snap,
            dsn=settings.dsn,
            database=req.database,
            tables=req.tables,
            schemas=req.schemas,
            clean=req.clean,
            pg_bin=settings.pg_bin,
            on_progress=advance,
        )
    rows = sum(result.row_counts.values())
    if req.as_json:
        print_json(
            {
                "snapshot": snap.id,
                "database": result.database,
                "created": result.created,
                "tables": len(result.row_counts),
                "rows": rows,
                "row_counts": result.row_counts,
                "counts_match": True,
                "bytes_read": result.bytes_read,
                "duration_s": round(result.duration, 3),
            }
        )
        return
    made = "new database" if result.created else "database"
    print(
        f"restored snapshot {snap.short_id} into {made} {result.database}: "
        f"{_tables(len(result.row_counts))}, {rows} rows (counts match the backup), "
        f"{human_bytes(result.bytes_read)} in {result.duration:.1f} s"
    )
