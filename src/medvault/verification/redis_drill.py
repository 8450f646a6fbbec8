"""The drill of a Redis snapshot: a scratch redis-server (in the drill's private scratch
directory, reachable only through a Unix socket there) loads the RDB over the replication
protocol, checking its CRC64 as it loads; then each database's key count is compared with
the counts recorded at backup. Those were read just before and just after the RDB was made:
the count must lie between them (equal them, when they agree). The server is killed at the
end: the data was in its memory only."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from medvault import faults
from medvault.errors import IntegrityError, SourceUnavailable
from medvault.recovery.redis import load_scratch, scratch_keyspace
from medvault.redisdb.facts import RedisFacts
from medvault.verification.drills import Check, cleanup_check, cleanup_timer, elapsed
from medvault.verification.scratch import make_scratch, remove_scratch

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.verification.drills import DrillResult


def drill_redis(
    repo: Repository, snapshot: Snapshot, scratch: str | None, result: DrillResult
) -> None:
    facts = RedisFacts.of(snapshot)
    workspace = make_scratch(scratch, kind="redis", source=snapshot.source, snapshot=snapshot.id)
    try:
        began = time.monotonic()
        try:
            with load_scratch(repo, snapshot, workspace) as server:
                result.checks.append(
                    Check(
                        "load",
                        True,
                        f"redis-server loaded the RDB ({facts.rdb_bytes} bytes, RDB version "
                        f"{facts.rdb_version}, CRC64 {facts.rdb_crc64 or 'none'} checked)",
                        elapsed(began),
                    )
                )
                began = time.monotonic()
                found = scratch_keyspace(server)
        except (IntegrityError, SourceUnavailable) as exc:
            result.checks.append(Check("load", False, str(exc), elapsed(began)))
            return
        result.checks.append(_compare(facts, found, elapsed(began)))
    finally:
        faults.point("drill.before-cleanup")
        with cleanup_timer(result):
            problem = remove_scratch(workspace)
        if problem is not None:
            result.checks.append(cleanup_check(workspace, problem))


def _compare(facts: RedisFacts, found: dict[int, int], seconds: float) -> Check:
    wrong = []
    for db in sorted(set(facts.databases) | set(found)):
        low, high = facts.expected(db)
        count = found.get(db, 0)
        if not low <= count <= high:
            said = str(low) if low == high else f"{low}-{high}"
            wrong.append(f"db{db}: {count} keys, the snapshot says {said}")
    if wrong:
        return Check("key counts", False, "; ".join(wrong), seconds)
    total = sum(found.values())
    how = "equal to" if facts.exact else "within"
    return Check(
        "key counts",
        True,
        f"{len(found)} databases, {total} keys, {how} the counts at backup",
        seconds,
    )
