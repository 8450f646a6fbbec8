"""The physical drill: restore a base backup into scratch space, replay its WAL in a throwaway
cluster, and prove the result is a working database.

Isolation. The throwaway cluster listens on no TCP address, only on a socket in a private
directory inside the scratch space, with its own pg_hba (trust, local only: nobody else can
reach the socket), archiving off, no synchronous standbys (promotion must not wait for
replicas that will never answer) and no SSL. Foreign tables are never read: they would reach
production servers.

WAL. The drill fetches the WAL itself, in order and in parallel, into a spool inside the
scratch space, a bounded number of segments ahead of replay; the server's restore_command
is a small script that waits for the next file (or fails at once for names the plan does not
hold, which is how PostgreSQL learns the archive ends). Decryption stays in this process: the
server never needs the repository's key, and no medvault process is started per segment.

Validation, in every database that accepts connections: each table's and its TOAST table's
`count(*)` by a sequential scan (the heap itself is read), amcheck's `bt_index_check` on every
valid B-tree index where the extension is available, then the user's checks from
`[source.NAME.drill]`.

One module per part: drill_cluster.py (the throwaway cluster: its account, isolation,
port, and stopping it), drill_wal.py (the WAL plan and its feeder), drill_validation.py
(counts and amcheck), user_checks.py (the user's SQL, for logical drills too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.verification.drill_validation import validate
from medvault.verification.scratch_cluster import ScratchCluster

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.verification.drills import DrillResult


@dataclass(frozen=True)
class DrillOptions:
    """User checks (SQL whose first value must be true, run in `database`) and the
    throwaway cluster's memory."""

    queries: tuple[str, ...] = ()
    database: str | None = None
    shared_buffers: str = "128MB"


def run_physical_drill(
    repo: Repository,
    snapshot: Snapshot,
    scratch_parent: str | None,
    *,
    to_latest: bool,
    pg_bin: str | None,
    dsn_user: str | None,
    options: DrillOptions,
    result: DrillResult,
) -> None:
    """Restore, recover, validate, appending each check to `result`. The server is gone
    when this returns or raises, and so is the scratch space, or a failed `cleanup` check
    names what is left."""
    from medvault.recovery.postgres import make_target
    from medvault.verification.drills import Check, cleanup_check, cleanup_timer

    add = result.checks.append
    cluster = ScratchCluster(
        repo,
        snapshot,
        scratch_parent,
        target=make_target(target="latest" if to_latest else "immediate"),
        pg_bin=pg_bin,
        dsn_user=dsn_user,
        shared_buffers=options.shared_buffers,
    )
    try:
        files = cluster.restore().files
        add(
            Check(
                "restore",
                True,
                f"{files.files} files, {files.bytes_written} bytes in {files.duration:.1f} s",
                round(files.duration, 3),
            )
        )
        began = time.monotonic()
        reached = cluster.recover()
        how = "the newest archived WAL" if to_latest else "the end of the backup"
        took = time.monotonic() - began
        add(
            Check(
                "recovery",
                True,
                f"replayed to {how} (LSN {reached.lsn}"
                f"{', ' + reached.time if reached.time else ''}; {cluster.wal_fetched} archived "
                f"WAL file(s) fetched) and promoted in {took:.1f} s",
                round(took, 3),
            )
        )
        assert cluster.access is not None
        validate(cluster.access, cluster.port, options, add)
    finally:
        with cleanup_timer(result):
            problem = cluster.close()
            if problem is not None:
                add(cleanup_check(cluster.scratch, problem))
