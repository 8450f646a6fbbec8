"""`check`: prove the repository's structure, and with read_data its every byte."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.errors import UsageError

if TYPE_CHECKING:
    from medvault.service.session import Session


@dataclass(frozen=True)
class CheckOptions:
    read_data: bool = False  # decrypt and verify every blob of every pack
    subset: float | None = None  # verify a random N percent of packs (0 < N <= 100)
    # One snapshot (any selector: an id, latest, verified, random:30d, ...) instead of the
    # whole repository: its trees and blobs, and with read_data their bytes.
    snapshot: str | None = None


@dataclass(frozen=True)
class CheckResult:
    errors: tuple[str, ...]
    notes: tuple[str, ...]
    affected: Mapping[str, tuple[str, ...]]  # snapshot id -> damaged paths
    snapshots: int
    packs: int
    packs_read: int
    blobs_read: int
    bytes_read: int
    wal_files: int
    wal_read: int
    checked: str | None = None  # the snapshot checked alone, when one was asked for

    @property
    def ok(self) -> bool:
        return not self.errors


def check(
    session: Session,
    options: CheckOptions,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> CheckResult:
    """Damage found is returned, not raised (the shell shows all of it and picks its exit
    code); its run is recorded as failed, with the count and the first error."""
    from medvault.repository.check import check_repository, check_snapshot
    from medvault.service.audit import audit_log
    from medvault.service.selectors import find_snapshot

    with session.run("check") as run:
        if options.subset is not None and not 0 < options.subset <= 100:
            raise UsageError("--read-data-subset must be between 0% and 100%")
        if options.subset is not None and options.snapshot is not None:
            raise UsageError("--read-data-subset samples the whole repository: not with SNAP")
        repo = session.open()
        run.repository = repo.url
        if options.snapshot is not None:
            snap = find_snapshot(repo, options.snapshot, run)
            run.source = snap.source
            run.touched(snap.id)
            run.details["snapshot"] = snap.id
            with repo.lock(exclusive=False, purpose="check"):
                report = check_snapshot(
                    repo, snap, read_data=options.read_data, on_progress=on_progress
                )
        else:
            # Heads this host wrote: anchors besides those the snapshots name (read first, so
            # an append meanwhile is no truncation).
            anchors = audit_log(session, repo).cached_heads()
            with repo.lock(exclusive=False, purpose="check"):
                report = check_repository(
                    repo,
                    read_data=options.read_data,
                    subset=options.subset,
                    on_progress=on_progress,
                    audit_anchors=anchors,
                )
        result = CheckResult(
            errors=tuple(report.errors),
            notes=tuple(report.notes),
            affected={snap: tuple(paths) for snap, paths in report.affected.items()},
            snapshots=report.snapshots,
            packs=report.packs,
            packs_read=report.packs_read,
            blobs_read=report.blobs_read,
            bytes_read=report.bytes_read,
            wal_files=report.wal_files,
            wal_read=report.wal_read,
            checked=run.details.get("snapshot"),
        )
        run.add_bytes(read=report.bytes_read)
        run.details.update(
            read_data=options.read_data,
            subset=options.subset,
            snapshots=report.snapshots,
            packs=report.packs,
            packs_read=report.packs_read,
            wal_files=report.wal_files,
            wal_read=report.wal_read,
            errors=len(report.errors),
            damaged_snapshots=sorted(report.affected),
        )
        if not result.ok:
            run.fail(f"{len(result.errors)} error(s) found: {result.errors[0]}")
        return result
