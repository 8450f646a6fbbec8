"""`medvault backup SOURCE --logical` (its report; the work is service/backup.py's) and
`medvault restore SNAP` of a logical snapshot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvault.cli.context import human_bytes, print_json

if TYPE_CHECKING:
    from medvault.service.backup import LogicalBackupResult
    from medvault.service.restore import CsvRestoreResult, LogicalListing, LogicalRestoreResult


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
                "format": result.format,
            }
        )
        return
    what, size = ("CSV export", "of CSV") if result.format == "csv" else ("logical", "dump")
    print(
        f"snapshot {snap.short_id} saved ({what}, database {result.database}): "
        f"{_tables(result.tables)}, {result.rows} rows, {human_bytes(result.bytes_read)} {size}, "
        f"added {human_bytes(result.bytes_added)} in {result.duration:.1f} s"
    )


def _report_listing(listing: LogicalListing, as_json: bool) -> None:
    counts = listing.row_counts
    if as_json:
        print_json(
            {
                "snapshot": listing.snapshot_id,
                "database": listing.database,
                "snapshot_time": listing.snapshot_time,
                "toc": list(listing.toc),
                "row_counts": counts,
            }
        )
        return
    for line in listing.toc:
        print(line)
    # Comment lines (';'), so the output still works as a pg_restore -L list.
    print(";")
    print(f"; Row counts recorded at backup (snapshot {listing.short_id}, {len(counts)} tables):")
    width = max((len(k) for k in counts), default=0)
    for key, rows in counts.items():
        print(f";   {key:<{width}}  {rows}")


def restore_logical_cmd(result: LogicalRestoreResult | LogicalListing, as_json: bool) -> None:
    """What `medvault restore` shows of a logical snapshot restored (or listed)."""
    from medvault.service.restore import LogicalListing

    if isinstance(result, LogicalListing):
        _report_listing(result, as_json)
        return
    if as_json:
        print_json(
            {
                "snapshot": result.snapshot_id,
                "database": result.database,
                "created": result.created,
                "tables": len(result.row_counts),
                "rows": result.rows,
                "row_counts": result.row_counts,
                "counts_match": True,
                "bytes_read": result.bytes_read,
                "duration_s": round(result.duration, 3),
                "checks": list(result.checks),
                "into": result.into,
            }
        )
        return
    if result.into is not None:
        print(
            f"restored a table of snapshot {result.short_id} as {result.into} in database "
            f"{result.database}: {result.rows} rows (the count matches the backup), "
            f"{human_bytes(result.bytes_read)} read in {result.duration:.1f} s"
        )
        return
    made = "new database" if result.created else "database"
    print(
        f"restored snapshot {result.short_id} into {made} {result.database}: "
        f"{_tables(len(result.row_counts))}, {result.rows} rows (counts match the backup), "
        f"{human_bytes(result.bytes_read)} in {result.duration:.1f} s"
    )
    for check in result.checks:
        print(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")


def report_csv_restore(result: CsvRestoreResult, as_json: bool) -> None:
    """What `medvault restore` shows of a CSV snapshot loaded or written out."""
    if as_json:
        print_json(
            {
                "snapshot": result.snapshot_id,
                "database": result.database,
                "target": result.directory,
                "tables": {t.table: {"rows": t.rows, "created": t.created} for t in result.tables},
                "checks": list(result.checks),
                "files": list(result.files),
                "rows": result.rows,
                "bytes_read": result.bytes_read,
                "duration_s": round(result.duration, 3),
            }
        )
        return
    if result.directory is not None:
        print(
            f"wrote {len(result.files)} CSV file(s) of snapshot {result.short_id} to "
            f"{result.directory}: {result.rows} rows, {human_bytes(result.bytes_read)} "
            f"in {result.duration:.1f} s"
        )
        for path in result.files:
            print(f"  {path}")
        return
    print(
        f"restored snapshot {result.short_id} into database {result.database}: "
        f"{_tables(len(result.tables))}, {result.rows} rows (counts match the backup), "
        f"{human_bytes(result.bytes_read)} in {result.duration:.1f} s"
    )
    for table in result.tables:
        made = " (created)" if table.created else ""
        print(f"  {table.table}: {table.rows} rows{made}")
    for check in result.checks:
        print(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")
