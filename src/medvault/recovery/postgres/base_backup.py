"""Choosing the base backup for a recovery: the newest physical backup of the source that can
reach the target."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvault.errors import IntegrityError, SnapshotNotFound
from medvault.postgres.facts import KIND_PHYSICAL, PhysicalFacts
from medvault.postgres.lsn import format_lsn, parse_lsn
from medvault.recovery.postgres.target import RecoveryTarget

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository


def physical_snapshots(repo: Repository, source: str) -> list[Snapshot]:
    """Complete physical backups of `source`, oldest consistent point first."""
    return [snap for snap, _facts in _physical_backups(repo, source)]


def _physical_backups(repo: Repository, source: str) -> list[tuple[Snapshot, PhysicalFacts]]:
    found = []
    for snap in repo.list_snapshots():
        if snap.kind != KIND_PHYSICAL or snap.source != source:
            continue
        try:
            found.append((snap, PhysicalFacts.of(snap)))
        except IntegrityError as exc:
            repo.warnings.append(f"backup {snap.short_id} left out: {exc}")
    return sorted(found, key=lambda pair: pair[1].consistent_at)


def choose_base_backup(repo: Repository, source: str, target: RecoveryTarget) -> Snapshot:
    """The newest backup that can reach the target: for a time, the newest that was
    consistent at or before it; for an LSN, the newest whose stop LSN is at or before it;
    otherwise the newest."""
    backups = _physical_backups(repo, source)
    if not backups:
        raise SnapshotNotFound(
            f"the repository holds no physical backup of source {source}; "
            f"take one with `medvault backup {source} --type full`"
        )
    if target.kind == "time":
        moment = target.moment
        usable = [snap for snap, facts in backups if facts.consistent_at <= moment]
        if not usable:
            oldest, facts = backups[0]
            raise SnapshotNotFound(
                f"no backup of {source} reaches back to {target.value}: the oldest usable time "
                f"is {facts.stop_time} (backup {oldest.short_id}); give a later "
                "--target-time"
            )
        return usable[-1]
    if target.kind == "lsn":
        wanted = parse_lsn(target.value)
        reaching = [pair for pair in backups if pair[1].stop_lsn <= wanted]
        if not reaching:
            oldest, facts = min(backups, key=lambda pair: pair[1].stop_lsn)
            raise SnapshotNotFound(
                f"no backup of {source} reaches back to LSN {target.value}: the oldest usable "
                f"LSN is {format_lsn(facts.stop_lsn)} (backup {oldest.short_id})"
            )
        return max(reaching, key=lambda pair: pair[1].stop_lsn)[0]
    return backups[-1][0]
