"""`replicate = true`: each new snapshot and WAL file goes to the repository's secondary right
after it is stored in the primary.

The primary copy is what a backup or wal-push promises; the secondary is best effort at that
moment. A backup whose replication failed says so and exits 22 (its snapshot is safe in the
primary; `medvault copy` catches the secondary up). A WAL file is acknowledged to PostgreSQL
once the primary holds it, whatever the secondary does: refusing it would pile WAL up on the
database server while the second site is down. `medvault copy` (or the next backup's
replication, which copies the source's missing WAL too) closes the gap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvault.errors import MedvaultError, ReplicationFailed

if TYPE_CHECKING:
    from medvault.cli.context import CliContext
    from medvault.config import RepositorySettings
    from medvault.repository.repo import Repository


def replication_target(settings: RepositorySettings | None) -> str | None:
    if settings is None or not settings.replicate:
        return None
    return settings.secondary


def replicate_snapshot(cli: CliContext, repo: Repository, snapshot_id: str, source: str) -> None:
    """Copy one new snapshot (and its source's WAL the secondary lacks) to the secondary."""
    from medvault.repository.copy import RepositoryCopier

    _, settings = cli.repository_target(source)
    secondary = replication_target(settings)
    if secondary is None:
        return
    try:
        target = cli.open(source, selector=secondary, other=True, sharing=repo)
        with target.lock(exclusive=False, purpose="replication") as lock:
            copier = RepositoryCopier(repo, target, retention_for=cli.retention_period)
            copier.lock = lock
            copier.copy_snapshots([repo.load_snapshot(snapshot_id)])
            copier.copy_wal([source])
    except MedvaultError as exc:
        raise ReplicationFailed(
            f"snapshot {snapshot_id[:12]} is stored in the primary, but replicating it to "
            f"{secondary} failed: {exc}; run `medvault copy --from <primary> --to {secondary}`"
        ) from exc
