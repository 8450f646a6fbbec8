"""Redis backups: the server's RDB snapshot, taken over the replication protocol (as
`redis-cli --rdb` does) and streamed straight into the repository: no RDB file is written.

Recorded with the snapshot (kind "redis"): the server's version, the keys of each database
(INFO keyspace) read just before SYNC and again once the RDB has arrived (the fork that
made the RDB lies between the two: a drill expects each database's count within them, and
exactly when they agree), the RDB's format version, its CRC64 (its last 8 bytes; the
repository authenticates every byte, and redis-server checks the CRC64 whenever a drill or a
restore loads it) and its size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medvault import faults
from medvault.errors import RedisReplyError, SourceUnavailable
from medvault.redisdb.facts import KIND_REDIS, RedisFacts
from medvault.redisdb.replication import RdbReader
from medvault.redisdb.resp import RedisAddress, connect, info, keyspace
from medvault.sources.stream import backup_stream

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository

RDB_NAME = b"dump.rdb"


@dataclass(frozen=True)
class RedisSource:
    """What a Redis backup reads: plain values, not medvault.toml's settings."""

    address: RedisAddress
    password: str | None
    tier: str | None = None


@dataclass
class RedisBackupResult:
    snapshot: Snapshot
    facts: RedisFacts
    bytes_read: int
    bytes_added: int
    duration: float


def backup_redis(
    repo: Repository,
    *,
    source: str,
    server: RedisSource,
    tags: tuple[str, ...] = (),
    on_progress: Callable[[int], None] | None = None,
) -> RedisBackupResult:
    conn = connect(server.address, server.password, select=False)
    try:
        try:
            version = info(conn, "server").get("redis_version", "unknown")
            before = keyspace(conn)
        except RedisReplyError as exc:
            raise SourceUnavailable(f"Redis server {conn.describe}: {exc}") from None
        faults.point("redis.before-sync")
        reader = RdbReader(conn)
        try:
            reader.start()
        except (OSError, ConnectionError) as exc:
            raise SourceUnavailable(f"Redis server {conn.describe}: {exc}") from None
        recorded: list[RedisFacts] = []

        def finish() -> dict[str, Any]:
            rdb = reader.facts()
            faults.point("redis.after-sync")
            with connect(server.address, server.password, select=False) as again:
                after = keyspace(again)
            facts = RedisFacts(
                server_version=version,
                keys_before=before,
                keys_after=after,
                rdb_version=int(rdb["rdb_version"]),  # type: ignore[call-overload]
                rdb_crc64=rdb["rdb_crc64"] if isinstance(rdb["rdb_crc64"], str) else None,
                rdb_bytes=reader.size,
            )
            recorded.append(facts)
            return facts.to_map()

        try:
            result = backup_stream(
                repo,
                reader,
                source=source,
                kind=KIND_REDIS,
                filename=RDB_NAME,
                facts={},
                tags=tags,
                tier=server.tier,
                on_progress=on_progress,
                before_save=finish,
            )
        except (OSError, ConnectionError) as exc:
            raise SourceUnavailable(
                f"Redis server {conn.describe}: the RDB transfer failed: {exc}"
            ) from None
    finally:
        conn.close()
    return RedisBackupResult(
        snapshot=result.snapshot,
        facts=recorded[-1],
        bytes_read=result.bytes_read,
        bytes_added=result.bytes_added,
        duration=result.duration,
    )
