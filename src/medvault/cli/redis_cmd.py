"""What `backup` and `restore` print for a Redis source."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvault.cli.context import human_bytes, print_json

if TYPE_CHECKING:
    from medvault.service.redis import RedisBackupResult, RedisRestoreResult


def _keys(counts: dict[int, int]) -> str:
    return ", ".join(f"db{db} {n}" for db, n in sorted(counts.items())) or "no keys"


def report_redis_backup(result: RedisBackupResult, as_json: bool) -> None:
    snap, facts = result.snapshot, result.facts
    if as_json:
        print_json(
            {
                "snapshot": snap.id,
                "source": snap.source,
                "kind": snap.kind,
                **facts.to_map(),
                "bytes_read": result.bytes_read,
                "bytes_added": result.bytes_added,
                "duration_s": round(result.duration, 3),
            }
        )
        return
    print(
        f"snapshot {snap.short_id} saved (Redis {facts.server_version}, RDB version "
        f"{facts.rdb_version}, CRC64 {facts.rdb_crc64 or 'none'}): {_keys(facts.keys_after)}; "
        f"read {human_bytes(result.bytes_read)}, added {human_bytes(result.bytes_added)} in "
        f"{result.duration:.1f} s"
    )


def report_redis_restore(result: RedisRestoreResult, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "snapshot": result.snapshot_id,
                "target": result.target,
                "rdb_file": result.rdb_file,
                "keys": {str(db): n for db, n in sorted(result.keys.items())},
                "expired": result.expired,
                "bytes_read": result.bytes_read,
                "duration_s": round(result.duration, 3),
            }
        )
        return
    if result.rdb_file:
        print(
            f"wrote the RDB of snapshot {result.short_id} to {result.target} "
            f"({human_bytes(result.bytes_read)})"
        )
        return
    expired = f"; {result.expired} key(s) expired since the backup" if result.expired else ""
    print(
        f"restored snapshot {result.short_id} into {result.target}: {_keys(result.keys)}"
        f"{expired} in {result.duration:.1f} s"
    )
