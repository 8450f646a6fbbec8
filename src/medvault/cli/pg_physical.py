"""`medvault backup SOURCE` for a PostgreSQL source: a physical backup of the cluster (the
work is service/backup.py's; this renders its result)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from medvault.cli.context import human_bytes, print_json, warn

if TYPE_CHECKING:
    from medvault.service.backup import PhysicalBackupResult


def report_physical_backup(result: PhysicalBackupResult, as_json: bool) -> None:
    for note in result.notes:
        warn(note)
    snap = result.snapshot
    facts = result.facts
    failures = result.checksum_failures
    if as_json:
        print_json(
            {
                "snapshot": snap.id,
                "source": snap.source,
                "kind": snap.kind,
                "type": snap.backup_type,
                "parent": snap.parent,
                "method": facts.method,
                "start_lsn": result.start_lsn,
                "stop_lsn": result.stop_lsn,
                "start_wal": facts.start_wal,
                "stop_wal": facts.stop_wal,
                "timeline": facts.timeline,
                "files_new": result.files.files_new,
                "files_changed": result.files.files_changed,
                "files_unchanged": result.files.files_unchanged,
                "bytes_read": result.files.bytes_read,
                "bytes_added": result.files.bytes_added,
                "duration_s": round(result.files.duration, 3),
                "data_checksums": facts.data_checksums,
                "checksum_failures": [asdict(failure) for failure in failures],
                "complete": result.complete,
            }
        )
    else:
        for problem in result.files.unreadable:
            warn(f"warning: could not read {problem.path}: {problem.reason}")
        for failure in failures:
            blocks = ", ".join(str(b) for b in failure.blocks[:10])
            more = " …" if len(failure.blocks) > 10 else ""
            warn(
                f"warning: page checksum failure in {failure.relation} "
                f"({failure.file}) block(s) {blocks}{more}"
            )
        parent = f", parent {snap.parent[:12]}" if snap.parent else ""
        print(
            f"snapshot {snap.short_id} saved (physical {snap.backup_type}{parent}): "
            f"WAL {result.start_lsn} to {result.stop_lsn} on timeline "
            f"{facts.timeline}; read {human_bytes(result.files.bytes_read)}, "
            f"added {human_bytes(result.files.bytes_added)} in {result.files.duration:.1f} s"
        )
    if failures:
        warn(
            f"warning: {len(failures)} relation file(s) have damaged pages; the snapshot "
            "keeps them as read. Repair the relations (e.g. from this or an older backup)"
        )
