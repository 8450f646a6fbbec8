"""Retention of archived WAL: segments that no retained physical backup and no PITR window
needs are removed (`prune`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medvault.errors import IntegrityError
from medvault.postgres.facts import KIND_PHYSICAL, PhysicalFacts
from medvault.postgres.lsn import PARTIAL, SEGMENT, segment_start_lsn

if TYPE_CHECKING:
    from medvault.repository.repo import Repository


@dataclass
class WalPruneResult:
    deleted: int = 0
    freed_bytes: int = 0
    kept_locked: int = 0
    notes: list[str] = field(default_factory=list)


def prune_wal(
    repo: Repository,
    windows: dict[str, dt.timedelta],
    *,
    young: dt.timedelta,
    dry_run: bool = False,
) -> WalPruneResult:
    """Remove archived WAL segments no retained physical backup and no PITR window needs.

    Per source: a segment goes only when it ends before the start of the oldest retained
    physical backup of that source (recovery replays from a backup's start onward, on
    whatever timeline), and it was archived longer ago than the source's `pitr_window` (and
    the safety margin `young`, which protects the WAL of a backup still running). History
    files, backup labels and the cluster record are kept: they are small, and recovery
    reads them. With no physical backup retained nothing is removed: a first backup may be
    on its way."""
    from medvault.errors import ObjectLocked, ObjectNotFound
    from medvault.repository.wal import WalArchive, archived_sources

    result = WalPruneResult()
    now = time.time()
    physical: list[tuple[str, PhysicalFacts | None]] = []
    for snap in repo.list_snapshots():
        if snap.kind == KIND_PHYSICAL:
            try:
                physical.append((snap.source, PhysicalFacts.of(snap)))
            except IntegrityError as exc:
                physical.append((snap.source, None))
                result.notes.append(f"{snap.source}: {exc}; its WAL is kept")
    sources = archived_sources(repo)
    for source in sources:
        found = [facts for name, facts in physical if name == source]
        own = [facts for facts in found if facts is not None]
        if not found:
            result.notes.append(f"{source}: no physical backup retained; its WAL is kept")
            continue
        if len(own) < len(found):
            continue  # where a retained backup's WAL starts cannot be told
        cutoff = min(facts.start_lsn for facts in own)
        size = own[0].wal_segment_size
        keep_newer = now - max(windows.get(source, dt.timedelta(0)), young).total_seconds()
        archive = WalArchive(repo, source)
        for obj in archive.files():
            name = obj.name
            if not (SEGMENT.match(name) or PARTIAL.match(name)):
                continue
            if obj.archived_at is None or obj.archived_at > keep_newer:
                continue
            if segment_start_lsn(name[:24], size) + size > cutoff:
                continue
            if dry_run:
                result.deleted += 1
                result.freed_bytes += obj.size
                continue
            try:
                archive.delete(name)
            except ObjectNotFound:
                continue
            except ObjectLocked:
                result.kept_locked += 1
                continue
            result.deleted += 1
            result.freed_bytes += obj.size
    return result
