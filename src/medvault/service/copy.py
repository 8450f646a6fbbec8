"""The second site: `copy` (snapshots and WAL to another repository) and `repair` (mend a
repository from such a copy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.errors import UsageError
from medvault.service.selectors import find_snapshot

if TYPE_CHECKING:
    from collections.abc import Callable

    from medvault.repository.copy import CopyResult as CopyProgress
    from medvault.service.runs import Run
    from medvault.service.session import Session


@dataclass(frozen=True)
class CopyOptions:
    from_repo: str  # a name from medvault.toml, or a path/URL
    to_repo: str
    snapshots: tuple[str, ...] = ()  # only these (ids or prefixes); default: all
    source: str | None = None  # only this source's snapshots (and WAL)
    wal: bool = True  # copy the WAL archive too


@dataclass(frozen=True)
class CopyResult:
    mode: str  # "raw" (shared keys: packs move as stored) or "re-encrypt"
    copied: tuple[str, ...]  # the target's ids of the new copies
    present: tuple[str, ...]  # the source's ids of snapshots the target had already
    packs: int
    blobs: int
    bytes_read: int
    bytes_stored: int
    wal_copied: int
    wal_present: int


@dataclass(frozen=True)
class RepairOptions:
    from_repo: str  # the second site: a name from medvault.toml, or a path/URL
    read_data: bool = True  # hash every pack; False only looks for them


@dataclass(frozen=True)
class RepairResult:
    packs_checked: int
    packs_replaced: tuple[str, ...]
    snapshots_replaced: tuple[str, ...]
    wal_replaced: tuple[str, ...]
    snapshots_copied: int
    wal_copied: int
    unrepaired: tuple[str, ...]  # "what: why"

    @property
    def ok(self) -> bool:
        return not self.unrepaired


def copy(
    session: Session,
    options: CopyOptions,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> CopyResult:
    """Copy the snapshots and WAL the target lacks. The source is only read; a killed copy
    is resumed by running it again."""
    from medvault.repository.copy import RepositoryCopier

    with session.run("copy", source=options.source) as run:
        _warm_s3_client(session, options.from_repo, options.to_repo)
        origin = session.open(selector=options.from_repo, other=True)
        target = session.open(selector=options.to_repo, sharing=origin)
        run.repository = target.url
        run.destination = target.url
        run.details["from"] = origin.url
        if origin.config.repo_id == target.config.repo_id:
            raise UsageError(f"--from and --to are the same repository ({origin.config.repo_id})")
        if options.snapshots:
            snapshots = [find_snapshot(origin, selector, run) for selector in options.snapshots]
        else:
            snapshots = origin.list_snapshots()
        if options.source is not None:
            snapshots = [s for s in snapshots if s.source == options.source]
        with target.lock(exclusive=False, purpose="copy") as lock:
            copier = RepositoryCopier(
                origin, target, retention_for=session.retention_period, on_progress=on_progress
            )
            copier.lock = lock
            try:
                copier.copy_snapshots(snapshots)
                if options.wal:
                    copier.copy_wal([options.source] if options.source else None)
                copier.copy_audit()  # the chains the copied snapshots name, verifiable there
            finally:  # what a copy that stopped halfway did stays in its record
                _record_copy(run, copier.result)
        done = copier.result
        return CopyResult(
            mode=done.mode,
            copied=tuple(done.copied),
            present=tuple(done.present),
            packs=done.packs,
            blobs=done.blobs,
            bytes_read=done.bytes_read,
            bytes_stored=done.bytes_stored,
            wal_copied=done.wal_copied,
            wal_present=done.wal_present,
        )


def _record_copy(run: Run, done: CopyProgress) -> None:
    for snapshot_id in done.copied:
        run.touched(snapshot_id)
    run.add_bytes(read=done.bytes_read, stored=done.bytes_stored)
    run.details.update(
        mode=done.mode,
        copied=len(done.copied),
        present=len(done.present),
        packs=done.packs,
        blobs=done.blobs,
        wal_copied=done.wal_copied,
        wal_present=done.wal_present,
        audit_copied=done.audit_copied,
    )


def _warm_s3_client(session: Session, *selectors: str) -> None:
    """Import boto3 on a thread while the first repository's key is derived (Argon2 runs
    without the GIL): a copy's fixed cost, paid once per run."""
    import threading

    urls = [session.repository_target(selector=s)[0] for s in selectors]
    if any(url.startswith("s3://") for url in urls):
        threading.Thread(target=_import_boto3, name="medvault-boto3-import", daemon=True).start()


def _import_boto3() -> None:
    import contextlib

    with contextlib.suppress(ImportError):
        import boto3  # noqa: F401


def repair(session: Session, options: RepairOptions) -> RepairResult:
    """Replace missing or damaged packs, snapshots and WAL of the session's repository with
    the copies at a second site, and bring over what it lacks. What could not be repaired is
    in the result (the run is recorded as incomplete), not raised."""
    from medvault.repository.repair import repair_from

    with session.run("repair") as run:
        primary = session.open()
        run.repository = primary.url
        secondary = session.open(selector=options.from_repo, other=True, sharing=primary)
        run.details["from"] = secondary.url
        if primary.config.repo_id == secondary.config.repo_id:
            raise UsageError(f"--from names this repository itself ({primary.config.repo_id})")
        primary.fallback = None  # judge and mend the primary's own objects
        with primary.lock(exclusive=False, purpose="repair"):
            done = repair_from(
                primary,
                secondary,
                read_data=options.read_data,
                retention_for=session.retention_period,
            )
        result = RepairResult(
            packs_checked=done.packs_checked,
            packs_replaced=tuple(done.packs_replaced),
            snapshots_replaced=tuple(done.snapshots_replaced),
            wal_replaced=tuple(done.wal_replaced),
            snapshots_copied=done.snapshots_copied,
            wal_copied=done.wal_copied,
            unrepaired=tuple(done.unrepaired),
        )
        for snapshot_id in result.snapshots_replaced:
            run.touched(snapshot_id)
        run.details.update(
            read_data=options.read_data,
            packs_checked=result.packs_checked,
            packs_replaced=len(result.packs_replaced),
            snapshots_replaced=len(result.snapshots_replaced),
            wal_replaced=len(result.wal_replaced),
            snapshots_copied=result.snapshots_copied,
            wal_copied=result.wal_copied,
            unrepaired=list(result.unrepaired),
        )
        if not result.ok:
            run.incomplete(f"{len(result.unrepaired)} object(s) could not be repaired")
        return result
