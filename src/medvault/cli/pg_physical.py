"""`medvault backup SOURCE` for a PostgreSQL source: a physical backup of the cluster."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

from medvault.cli.context import CliContext, human_bytes, print_json, progress_bar, warn
from medvault.errors import EXIT_INCOMPLETE, UsageError

if TYPE_CHECKING:
    from medvault.config import PostgresSourceSettings

METHODS = ("local", "stream")


def backup_physical_cmd(
    cli: CliContext,
    name: str,
    settings: PostgresSourceSettings,
    backup_type: str,
    method: str,
    tags: tuple[str, ...],
    as_json: bool,
) -> None:
    from medvault.postgres.lsn import format_lsn
    from medvault.sources.postgres.physical_local import backup_physical
    from medvault.sources.postgres.physical_stream import backup_streamed

    if method not in METHODS:
        raise UsageError(f"--method must be local or stream, not {method!r}")
    repo = cli.open(name)
    all_tags = tuple(dict.fromkeys([*settings.tags, *tags]))
    with progress_bar("backing up", None, not as_json) as advance:
        if method == "local":
            result = backup_physical(repo, name, settings, backup_type, all_tags, advance)
        else:
            if backup_type != "full":
                warn("note: --method stream always takes a full copy")
            result = backup_streamed(repo, name, settings, all_tags, advance)
    snap = result.files.snapshot
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
                "start_lsn": format_lsn(facts.start_lsn),
                "stop_lsn": format_lsn(facts.stop_lsn),
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
                "complete": not failures and result.files.complete,
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
            f"WAL {format_lsn(facts.start_lsn)} to {format_lsn(facts.stop_lsn)} on timeline "
            f"{facts.timeline}; read {human_bytes(result.files.bytes_read)}, "
            f"added {human_bytes(result.files.bytes_added)} in {result.files.duration:.1f} s"
        )
    if failures:
        warn(
            f"warning: {len(failures)} relation file(s) have damaged pages; the snapshot "
            "keeps them as read. Repair the relations (e.g. from this or an older backup)"
        )
    from medvault.cli.replication import replicate_snapshot

    replicate_snapshot(cli, repo, snap.id, name)
    if failures or not result.files.complete:
        raise typer.Exit(EXIT_INCOMPLETE)
