"""What a Redis snapshot records (Snapshot.facts of kind "redis"), read back checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from medvault.errors import IntegrityError

KIND_REDIS = "redis"


class Snapshot(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def short_id(self) -> str: ...

    @property
    def facts(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class RedisFacts:
    server_version: str
    keys_before: dict[int, int] = field(default_factory=dict)  # db -> keys, before SYNC
    keys_after: dict[int, int] = field(default_factory=dict)  # and once the RDB arrived
    rdb_version: int = 0
    rdb_crc64: str | None = None  # hex of the RDB's last 8 bytes (v5+)
    rdb_bytes: int = 0

    @property
    def exact(self) -> bool:
        """Whether the counts held still while the RDB was made."""
        return self.keys_before == self.keys_after

    def expected(self, db: int) -> tuple[int, int]:
        """The range the RDB's key count of `db` lies in."""
        a, b = self.keys_before.get(db, 0), self.keys_after.get(db, 0)
        return min(a, b), max(a, b)

    @property
    def databases(self) -> list[int]:
        return sorted(set(self.keys_before) | set(self.keys_after))

    def to_map(self) -> dict[str, Any]:
        return {
            "server_version": self.server_version,
            "keys_before": {str(db): n for db, n in sorted(self.keys_before.items())},
            "keys_after": {str(db): n for db, n in sorted(self.keys_after.items())},
            "rdb_version": self.rdb_version,
            "rdb_crc64": self.rdb_crc64,
            "rdb_bytes": self.rdb_bytes,
        }

    @classmethod
    def of(cls, snapshot: Snapshot) -> RedisFacts:
        if snapshot.kind != KIND_REDIS:
            raise IntegrityError(f"snapshot {snapshot.short_id} is not a Redis snapshot")
        stored = snapshot.facts
        try:
            return cls(
                server_version=str(stored["server_version"]),
                keys_before=_counts(stored["keys_before"]),
                keys_after=_counts(stored["keys_after"]),
                rdb_version=int(stored["rdb_version"]),
                rdb_crc64=None if stored.get("rdb_crc64") is None else str(stored["rdb_crc64"]),
                rdb_bytes=int(stored["rdb_bytes"]),
            )
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(
                f"snapshot {snapshot.short_id}: its Redis facts are malformed"
            ) from None


def _counts(value: object) -> dict[int, int]:
    if not isinstance(value, dict):
        raise TypeError("not a mapping")
    counts = {int(db): int(n) for db, n in value.items()}
    if any(db < 0 or n < 0 for db, n in counts.items()):
        raise ValueError("negative")
    return counts
