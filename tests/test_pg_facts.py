"""The facts of PostgreSQL snapshots (docs/format.md §17): maps as medvault has always stored
them read as typed records and are written back byte for byte; malformed ones are refused."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from medvault.errors import IntegrityError
from medvault.postgres.facts import ChecksumFailure, LogicalFacts, PhysicalFacts
from medvault.repository.records import Snapshot, decode_snapshot, encode_snapshot

LABEL = (
    "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
    "CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n"
    "START TIME: 2026-03-02 10:00:00 UTC\nLABEL: medvault emr\nSTART TIMELINE: 1\n"
)

# Key for key, in order, what a local backup (the backup API around a walk) stores.
LOCAL = {
    "pg_version_num": 150008,
    "pg_version": "15.8 (Debian 15.8-1)",
    "system_identifier": "7301234567890123456",
    "timeline": 1,
    "start_lsn": "0/2000028",
    "start_wal": "000000010000000000000002",
    "start_time": "2026-03-02T10:00:00.123456+00:00",
    "data_checksums": True,
    "wal_segment_size": 16777216,
    "method": "local",
    "pgdata": "/var/lib/postgresql/15/main",
    "tablespaces": {"16400": "/srv/space1"},
    "stop_lsn": "0/3000100",
    "stop_wal": "000000010000000000000003",
    "stop_time": "2026-03-02T10:00:05.654321+00:00",
    "backup_label": LABEL,
    "tablespace_map": "16400 /srv/space1\n",
    "checksum_failures": [
        {"file": "base/5/16384", "relation": "public.patients in database emr", "blocks": [3, 7]}
    ],
}

# What the streamed method (pg_basebackup) stores: the same keys in another order.
STREAM = {
    "pg_version_num": 160004,
    "pg_version": "16.4",
    "system_identifier": "7301234567890123456",
    "data_checksums": False,
    "wal_segment_size": 16777216,
    "method": "stream",
    "pgdata": "/var/lib/postgresql/16/main",
    "tablespaces": {},
    "checksum_failures": [],
    "timeline": 2,
    "start_lsn": "1/A2000028",
    "stop_lsn": "1/A3000100",
    "start_wal": "0000000200000001000000A2",
    "stop_wal": "0000000200000001000000A3",
    "start_time": "2026-03-02 10:00:00 UTC",
    "stop_time": "2026-03-02T10:00:05.654321+00:00",
    "backup_label": LABEL,
    "tablespace_map": "",
}

LOGICAL = {
    "database": "emr",
    "server_version": "15.8 (Debian 15.8-1)",
    "server_version_num": 150008,
    "snapshot_time": "2026-03-02T11:00:00.123456+01:00",
    "encoding": "UTF8",
    "lc_collate": "C.UTF-8",
    "lc_ctype": "C.UTF-8",
    "system_identifier": None,
    "dump_format": "custom",
    "dump_compression": "none",
    "pg_dump_version": "pg_dump (PostgreSQL) 15.8",
    "row_counts": {"public.patients": 50000, "public.visits": 0},
}


def snapshot_of(kind: str, facts: dict[str, Any]) -> Snapshot:
    """A snapshot as the repository stores and reads it back."""
    snap = Snapshot(
        time="2026-03-02T10:00:00.000001+00:00",
        end_time="2026-03-02T10:00:06.000001+00:00",
        host="db1",
        user="postgres",
        source="emr",
        kind=kind,
        backup_type="full",
        paths=("/var/lib/postgresql/15/main",),
        tree=bytes(32),
        facts=facts,
    )
    return decode_snapshot(encode_snapshot(snap), "ab" * 32)


@pytest.mark.parametrize(
    "stored",
    [LOCAL, {k: v for k, v in LOCAL.items() if k != "checksum_failures"}, STREAM],
    ids=["local", "local-without-checksums", "stream"],
)
def test_physical_facts_are_written_back_byte_for_byte(stored: dict[str, Any]) -> None:
    facts = PhysicalFacts.of(snapshot_of("postgres.physical", stored))
    written = facts.to_map()
    assert written == stored
    assert msgpack.packb(written) == msgpack.packb(stored)  # the same keys in the same order


def test_physical_facts_read_as_typed_fields() -> None:
    facts = PhysicalFacts.of(snapshot_of("postgres.physical", LOCAL))
    assert facts.start_lsn == 0x2000028 and facts.stop_lsn == 0x3000100
    assert facts.timeline == 1 and facts.major == 15
    assert facts.consistent_at.isoformat() == "2026-03-02T10:00:05.654321+00:00"
    assert facts.tablespaces == {"16400": "/srv/space1"}
    assert facts.checksum_failures == (
        ChecksumFailure("base/5/16384", "public.patients in database emr", (3, 7)),
    )
    without = PhysicalFacts.from_map({k: v for k, v in LOCAL.items() if k != "checksum_failures"})
    assert without.checksum_failures is None


@pytest.mark.parametrize("identifier", [None, "7301234567890123456"])
def test_logical_facts_are_written_back_byte_for_byte(identifier: str | None) -> None:
    stored = LOGICAL | {"system_identifier": identifier}
    facts = LogicalFacts.of(snapshot_of("postgres.logical", stored))
    assert facts.row_counts == {"public.patients": 50000, "public.visits": 0}
    assert facts.system_identifier == identifier
    assert msgpack.packb(facts.to_map()) == msgpack.packb(stored)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("stop_lsn", None),  # missing
        ("stop_lsn", "-1/0"),
        ("timeline", True),
        ("timeline", 0),
        ("wal_segment_size", 3 * 1024 * 1024),
        ("start_wal", "00000001000000000000000G"),
        ("stop_time", "2026-03-02 10:00:05"),  # no zone
        ("system_identifier", "0x1f"),
        ("tablespaces", {"16400": 7}),
        ("checksum_failures", [{"file": "base/5/1", "relation": "x", "blocks": ["3"]}]),
        ("method", "rsync"),
    ],
)
def test_malformed_physical_facts_are_an_integrity_error(key: str, value: object) -> None:
    stored = {k: v for k, v in LOCAL.items() if k != key}
    if value is not None:
        stored[key] = value
    snapshot = snapshot_of("postgres.physical", stored)
    with pytest.raises(IntegrityError, match=f"snapshot {snapshot.short_id} .*'{key}'"):
        PhysicalFacts.of(snapshot)


@pytest.mark.parametrize(
    ("key", "value"),
    [("row_counts", {"public.patients": -1}), ("server_version_num", "150008")],
)
def test_malformed_logical_facts_are_an_integrity_error(key: str, value: object) -> None:
    with pytest.raises(IntegrityError, match=f"'{key}'"):
        LogicalFacts.from_map(LOGICAL | {key: value})


def test_facts_of_another_kind_are_refused() -> None:
    with pytest.raises(IntegrityError, match=r"not postgres\.physical"):
        PhysicalFacts.of(snapshot_of("postgres.logical", LOGICAL))
