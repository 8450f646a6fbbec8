"""`replicate = true`: each new snapshot and WAL file goes to the repository's secondary right
after it is stored in the primary.

The primary copy is what a backup or wal-push promises; the secondary is best effort at that
moment. A backup whose replication failed says so and exits 22 (its snapshot is safe in the
primary; `medvault copy` catches the secondary up). A WAL file is acknowledged to PostgreSQL
once the primary holds it, whatever the secondary does: refusing it would pile WAL up on the
database server while the second site is down. `medvault copy` (or the next backup's
replication, which copies the source's missing WAL too) closes the gap.

The backup operations (service/backup.py) call replicate_snapshot themselves, so every shell
(CLI, API, scheduler) replicates alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvault.errors import MedvaultError, ReplicationFailed

if TYPE_CHECKING:
    from medvault.config import RepositorySettings
    from medvault.repository.repo import Repository
    from medvault.service.session import Session


def replication_target(settings: RepositorySettings | None) -> str | None:
    """The secondary new snapshots go to, or None when the repository does not replicate."""
    if settings is None or not settings.replicate:
        return None
    return settings.secondary


def replicate_snapshot(
    session: Session, repo: Repository, snapshot_id: str, source: str
) -> str | None:
    """Copy one new snapshot (and its source's WAL the secondary lacks) to the secondary.

    Returns the secondary's name, or None when there is none to replicate to. Raises
    ReplicationFailed (the snapshot stays in the primary) when the copy fails."""
    from medvault.repository.copy import RepositoryCopier

    _, settings = session.repository_target(source)
    secondary = replication_target(settings)
    if secondary is None:
        return None
    try:
        target = session.open(source, selector=secondary, other=True, sharing=repo)
        with target.lock(exclusive=False, purpose="replication") as lock:
            copier = RepositoryCopier(repo, target, retention_for=session.retention_period)
            copier.lock = lock
            copier.copy_snapshots([repo.load_snapshot(snapshot_id)])
            copier.copy_wal([source])
    except MedvaultError as exc:
        raise ReplicationFailed(
            f"snapshot {snapshot_id[:12]} is stored in the primary, but replicating it to "
            f"{secondary} failed: {exc}; run `medvault copy --from <primary> --to {secondary}`"
        ) from exc
    return secondary
