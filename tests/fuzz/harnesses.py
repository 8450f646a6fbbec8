"""Fuzz harnesses: one per parser of stored bytes or object names.

Each harness takes one input (bytes), hands it to a parser the way medvault meets stored data,
and lets through only the medvault errors that parser may answer with (named per harness).
Any other exception (TypeError, KeyError, RecursionError, MemoryError, OverflowError, ...)
is a bug. What a parser returns is checked too: a value of the wrong type handed on is the
same bug, one call later.

Sealed objects are fuzzed twice: as raw garbage, and as well-formed objects sealed with the
repository's real key around a fuzzed plaintext, since anyone holding the key (a compromised
client) can write any payload.

"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tests.fuzz.world import SOURCE, world

from medvault.errors import IntegrityError, UnsupportedFormat, UsageError, WrongPassphrase
from medvault.policy import holds
from medvault.postgres import lsn as pglsn
from medvault.postgres import timelines as pgtimelines
from medvault.postgres import walrecords as pgwalrecords
from medvault.repository import compression, crypto, packs, prune, records
from medvault.repository.index import MasterIndex, PackRecord, decode_index, encode_index
from medvault.repository.keys import (
    Credential,
    KeySlot,
    MasterKey,
    open_master_key,
    read_keyfile,
)
from medvault.repository.locks import LockInfo, parse_lock, read_locks
from medvault.repository.records import KIND_DRILL
from medvault.repository.repo import KIND_INDEX, KIND_SNAPSHOT, RepoConfig
from medvault.repository.wal import KIND_WAL, KIND_WAL_CLUSTER, ClusterRecord
from medvault.verification import drills

U32 = 2**32
U64 = 2**64


# -- inputs ----------------------------------------------------------------------------------


class Cursor:
    """Reads an input as a few fields and a rest; a short input reads as zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        return self.take(1)[0] if self.pos < len(self.data) else 0

    def u32(self) -> int:
        return int.from_bytes(self.take(4).ljust(4, b"\0"), "little")

    def take(self, n: int) -> bytes:
        part = self.data[self.pos : self.pos + n]
        self.pos += n
        return part

    def sized(self) -> bytes:
        """A field of up to 255 bytes, its length first."""
        return self.take(self.byte())

    def rest(self) -> bytes:
        part = self.data[self.pos :]
        self.pos = len(self.data)
        return part


def file_name(raw: bytes) -> str:
    """Any name a file system (or an S3 key component) can hold."""
    raw = raw.replace(b"/", b"_").replace(b"\0", b"_")[:200]
    if raw in (b"", b".", b".."):
        raw = b"x" + raw
    return os.fsdecode(raw)


# -- what parsers may return -----------------------------------------------------------------


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def _hex(value: object, length: int) -> bool:
    return isinstance(value, str) and re.fullmatch(f"[0-9a-f]{{{length}}}", value) is not None


def _aware_time(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.tzinfo is not None


def check_entry(entry: packs.PackEntry) -> None:
    assert isinstance(entry.blob_id, bytes) and len(entry.blob_id) == 32, entry
    assert _is_int(entry.blob_type, 0, 256), entry
    for value in (entry.ordinal, entry.offset, entry.length, entry.raw_length):
        assert _is_int(value, 0, U32), entry


def check_node(node: records.Node) -> None:
    records.check_name(node.name)
    assert isinstance(node.name, bytes), node
    assert node.type in records.NODE_TYPES, node
    assert _is_int(node.mode, 0, 0o10000), node
    assert _is_int(node.uid, 0, U32) and _is_int(node.gid, 0, U32), node
    assert isinstance(node.user, str) and isinstance(node.group, str), node
    assert _is_int(node.mtime_ns, -(2**63), 2**64) and _is_int(node.ctime_ns, -(2**63), 2**64)
    for value in (node.inode, node.dev, node.size):
        assert _is_int(value, 0, U64), node
    assert isinstance(node.content, tuple), node
    assert all(isinstance(c, bytes) and len(c) == 32 for c in node.content), node
    assert node.subtree is None or (isinstance(node.subtree, bytes) and len(node.subtree) == 32)
    assert (node.type == records.DIR) == (node.subtree is not None), node
    assert isinstance(node.target, bytes), node


def check_snapshot(snap: records.Snapshot) -> None:
    assert _aware_time(snap.time) and _aware_time(snap.end_time), snap
    assert snap.taken.tzinfo is not None
    for text in (snap.host, snap.user, snap.source, snap.kind, snap.backup_type, snap.program):
        assert isinstance(text, str), snap
    for texts in (snap.paths, snap.tags):
        assert isinstance(texts, tuple) and all(isinstance(t, str) for t in texts), snap
    assert isinstance(snap.tree, bytes) and len(snap.tree) == 32, snap
    for optional in (snap.parent, snap.tier, snap.origin):
        assert optional is None or isinstance(optional, str), snap
    assert isinstance(snap.stats, dict) and isinstance(snap.facts, dict), snap
    assert all(isinstance(k, str) for k in [*snap.stats, *snap.facts]), snap


def check_lock(lock: LockInfo, now: float) -> None:
    assert isinstance(lock.exclusive, bool) and lock.scope in ("", "prune", "keys"), lock
    for text in (lock.host, lock.namespace, lock.process_start, lock.user, lock.purpose):
        assert isinstance(text, str), lock
    assert isinstance(lock.pid, int) and lock.pid >= 0, lock
    for number in (lock.created, lock.refreshed, lock.lease):
        assert isinstance(number, int | float) and math.isfinite(number), lock
    lock.describe(now)
    lock.describe(None)
    lock.stale_reason(None)
    _ = lock.clock_skew
    lock.conflicts_with(lock)


def check_master(master: MasterKey) -> None:
    assert isinstance(master.id_key, bytes) and len(master.id_key) == 32, master
    assert isinstance(master.mac_key, bytes) and len(master.mac_key) == 32, master
    assert _is_int(master.chunker_seed, 0, U64), master
    assert master.data_keys, master
    for key in master.data_keys:
        assert isinstance(key.key_id, bytes) and len(key.key_id) == crypto.KEY_ID_LEN, master
        assert isinstance(key.key, bytes) and len(key.key) == 32, master
    assert master.current.key_id == master.current_key_id
    master.blob_id(b"x")
    master.mac(b"x")


def check_config(config: RepoConfig) -> None:
    assert config.version == 1 and _hex(config.repo_id, 32), config
    assert isinstance(config.created, str), config
    chunker = config.chunker
    assert isinstance(chunker.algorithm, str), config
    assert _is_int(chunker.min_size, 64, 2**20 + 1), config
    assert _is_int(chunker.avg_size, 256, 4 * 2**20 + 1), config
    assert _is_int(chunker.max_size, 1024, 16 * 2**20 + 1), config
    assert chunker.min_size <= chunker.avg_size <= chunker.max_size, config
    assert _is_int(chunker.normalization, 0, 4), config
    assert _is_int(config.compression_level, -(2**17), 23), config
    assert _is_int(config.pack_size, 1, 2**31 + 1), config


def check_hold(hold: holds.Hold) -> None:
    for text in (hold.snapshot, hold.reason, hold.user, hold.host, hold.time):
        assert isinstance(text, str), hold
    for optional in (hold.released, hold.release_reason, hold.released_by):
        assert optional is None or isinstance(optional, str), hold


def check_drill(result: drills.DrillResult) -> None:
    for text in (result.snapshot, result.source, result.kind, result.started, result.id):
        assert isinstance(text, str), result
    for number in (result.rto_s, result.cleanup_s):
        assert isinstance(number, int | float) and math.isfinite(number), result
    assert result.rto_target_s is None or isinstance(result.rto_target_s, int | float), result
    assert isinstance(result.ok, bool), result
    assert result.error is None or isinstance(result.error, str), result
    for check in result.checks:
        assert isinstance(check, drills.Check), result
        assert isinstance(check.name, str) and isinstance(check.ok, bool), result
        assert isinstance(check.detail, str), result
        assert check.seconds is None or isinstance(check.seconds, int | float), result
    _ = result.within_rto


def check_cluster(record: ClusterRecord) -> None:
    assert record.system_identifier.isdigit() and int(record.system_identifier) < U64, record
    size = record.segment_size
    assert _is_int(size, 1, 2**30 + 1) and size & (size - 1) == 0, record
    assert isinstance(record.created, str), record


# -- the harnesses ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Harness:
    name: str
    parser: str  # what is fuzzed, for the report
    accepts: str  # the errors it may answer with, for the report
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    runs: int  # inputs in `make fuzz`


HARNESSES: dict[str, Harness] = {}


def harness(
    parser: str,
    accepts: str,
    runs: int,
    seeds: Callable[[], list[bytes]],
) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    def register(run: Callable[[bytes], None]) -> Callable[[bytes], None]:
        name = run.__name__.removeprefix("fuzz_")
        HARNESSES[name] = Harness(name, parser, accepts, run, seeds, runs)
        return run

    return register


def _sealed(plaintext: bytes, kind: bytes) -> bytes:
    """A well-formed sealed object around any plaintext, as a holder of the key writes it."""
    return world().repo.seal(plaintext, kind)


def _with_prefix(prefix: bytes, items: list[bytes]) -> list[bytes]:
    return [prefix + item for item in items]


# Packs ---------------------------------------------------------------------------------------


@dataclass
class _PackSample:
    content_key: bytes
    key_block: bytes
    blobs: bytes  # the sealed blobs of a real pack, back to back
    table: bytes  # its entry table


def _pack_sample() -> _PackSample:
    w = world()
    builder = packs.PackBuilder(w.kek)
    for text in (b"first blob", b"second blob " * 50, b""):
        builder.add(w.repo.blob_id(text), packs.DATA_BLOB, compression.encode(text, 3), len(text))
    table = packs.pack_entries(builder.entries)
    content_key = crypto.unwrap_content_key(w.keks, builder.key_block)
    blobs = builder.finish()[: builder.size]
    return _PackSample(content_key, builder.key_block, blobs, table)


def _pack_seeds() -> list[bytes]:
    w = world()
    builder = packs.PackBuilder(w.kek)
    builder.add(w.repo.blob_id(b"x"), packs.DATA_BLOB, b"\0x", 1)
    return [builder.finish(), b"", b"MVP1", b"\0" * 89 + b"MVP1"]


def _read_blobs(sample_key: bytes, pack: bytes, entries: list[packs.PackEntry]) -> None:
    for entry in entries[:64]:
        check_entry(entry)
        sealed = pack[entry.offset : entry.offset + entry.length]
        try:
            payload = packs.open_blob(sample_key, entry, sealed)
            data = compression.decode(payload, entry.raw_length)
        except IntegrityError:
            continue
        assert len(data) == entry.raw_length


@harness("packs.read_pack_header (raw bytes)", "IntegrityError", 80_000, _pack_seeds)
def fuzz_pack_raw(data: bytes) -> None:
    try:
        key_block, entries = packs.read_pack_header(world().keks, data)
    except IntegrityError:
        return
    assert len(key_block) == crypto.KEY_BLOCK_LEN
    for entry in entries:
        check_entry(entry)


def _pack_table_seeds() -> list[bytes]:
    sample = _pack_sample()
    return [sample.table, sample.table[:49], b"", sample.table + b"\0"]


@harness(
    "packs.read_pack_header + open_blob + compression.decode (sealed header, fuzzed table)",
    "IntegrityError",
    40_000,
    _pack_table_seeds,
)
def fuzz_pack_table(data: bytes) -> None:
    sample = _SAMPLE.get()
    header = AESGCM(sample.content_key).encrypt(crypto.HEADER_NONCE, data, packs.HEADER_AAD)
    pack = sample.blobs + header + sample.key_block + packs.TRAILER.pack(len(header), b"MVP1")
    try:
        key_block, entries = packs.read_pack_header(world().keks, pack)
    except IntegrityError:
        return
    assert key_block == sample.key_block
    _read_blobs(sample.content_key, pack, entries)


class _Lazy:
    def __init__(self, make: Callable[[], _PackSample]) -> None:
        self._make = make
        self._value: _PackSample | None = None

    def get(self) -> _PackSample:
        if self._value is None:
            self._value = self._make()
        return self._value


_SAMPLE = _Lazy(_pack_sample)


@harness("packs.unpack_entries", "IntegrityError", 40_000, _pack_table_seeds)
def fuzz_pack_entries(data: bytes) -> None:
    try:
        entries = packs.unpack_entries(data)
    except IntegrityError:
        return
    for entry in entries:
        check_entry(entry)


# Key blocks, sealed objects, payloads --------------------------------------------------------


def _key_block_seeds() -> list[bytes]:
    w = world()
    block = crypto.wrap_content_key(w.kek, os.urandom(32))
    return [block, block[:80], b"MVK\x01\x02" + block[5:], b"MVK\x01\x01" + bytes(76)]


@harness(
    "crypto.key_block_kek_id, crypto.unwrap_content_key",
    "IntegrityError",
    40_000,
    _key_block_seeds,
)
def fuzz_key_block(data: bytes) -> None:
    try:
        kek_id = crypto.key_block_kek_id(data)
    except IntegrityError:
        return
    assert len(kek_id) == crypto.KEY_ID_LEN
    try:
        content_key = crypto.unwrap_content_key(world().keks, data)
    except IntegrityError:
        return
    assert len(content_key) == 32


def _sealed_object_seeds() -> list[bytes]:
    w = world()
    return [
        crypto.seal_object(w.kek, b"\0payload", KIND_SNAPSHOT),
        crypto.seal_object(w.kek, b"", KIND_INDEX),
        bytes(97),
    ]


@harness(
    "crypto.open_object (raw bytes)",
    "IntegrityError",
    40_000,
    _sealed_object_seeds,
)
def fuzz_sealed_object(data: bytes) -> None:
    try:
        crypto.open_object(world().keks, data, KIND_SNAPSHOT)
    except IntegrityError:
        return


def _payload_seeds() -> list[bytes]:
    samples = [b"", b"a", b"abc" * 100, bytes(5000), os.urandom(300)]
    seeds = []
    for sample in samples:
        encoded = compression.encode(sample, 3)
        seeds.append(b"\0" + encoded)  # no raw length known (sealed objects)
        seeds.append(b"\1" + struct.pack("<I", len(sample)) + encoded)  # blobs
    return seeds


@harness("compression.decode", "IntegrityError", 80_000, _payload_seeds)
def fuzz_payload(data: bytes) -> None:
    cursor = Cursor(data)
    raw_length = cursor.u32() if cursor.byte() & 1 else None
    payload = cursor.rest()
    try:
        decoded = compression.decode(payload, raw_length)
    except IntegrityError:
        return
    assert isinstance(decoded, bytes)
    if raw_length is not None:
        assert len(decoded) == raw_length


# Index -----------------------------------------------------------------------------------------


def _index_seeds() -> list[bytes]:
    sample = _pack_sample()
    record = PackRecord("ab" * 32, sample.key_block, packs.unpack_entries(sample.table))
    return [
        encode_index([record]),
        encode_index([record, record], supersedes=["cd" * 32]),
        encode_index([]),
        msgpack.packb({"v": 1, "packs": [{"id": "x", "key": 1, "blobs": "y"}]}),
    ]


def _load_tables(tables: list[tuple[str, bytes, bytes]]) -> None:
    index = MasterIndex()
    for pack_id, key_block, table in tables:
        index.add_table(pack_id, key_block, table)
    index.merge()
    for record in index.packs():
        for entry in record.entries:
            check_entry(entry)
            assert index.lookup(entry.blob_id) is not None
            index.locations(entry.blob_id)


@harness(
    "index.decode_index + MasterIndex.add_table (sealed, fuzzed payload)",
    "IntegrityError",
    60_000,
    _index_seeds,
)
def fuzz_index(data: bytes) -> None:
    repo = world().repo
    try:
        tables, supersedes = decode_index(repo.unseal(_sealed(data, KIND_INDEX), KIND_INDEX))
    except IntegrityError:
        return
    for pack_id, key_block, table in tables:
        assert _hex(pack_id, 64), pack_id
        assert isinstance(key_block, bytes) and len(key_block) == crypto.KEY_BLOCK_LEN
        assert isinstance(table, bytes)
    assert isinstance(supersedes, list) and all(isinstance(s, str) for s in supersedes)
    try:
        _load_tables(tables)
    except IntegrityError:
        return


@harness("MasterIndex.add_table (entry table)", "IntegrityError", 40_000, _pack_table_seeds)
def fuzz_index_table(data: bytes) -> None:
    try:
        _load_tables([("ab" * 32, _SAMPLE.get().key_block, data)])
    except IntegrityError:
        return


# Trees and snapshots -------------------------------------------------------------------------


def _tree_seeds() -> list[bytes]:
    blob = bytes(range(32))
    nodes = [
        records.Node(b"dir", records.DIR, 0o755, subtree=blob),
        records.Node(
            b"file", records.FILE, 0o4755, 1000, 1000, "u", "g", 10**18, -5, 7, 8, 3, (blob, blob)
        ),
        records.Node(b"link", records.SYMLINK, target=b"../x"),
        records.Node(b"fifo", "fifo"),
    ]
    return [
        records.encode_tree(nodes),
        records.encode_tree([]),
        msgpack.packb({"v": 1, "nodes": [{"n": "text", "t": "file"}]}),
        msgpack.packb({"v": 1, "nodes": [{"n": b"a", "t": "file", "m": "rwx"}]}),
    ]


@harness("records.decode_tree (a tree blob's plaintext)", "IntegrityError", 80_000, _tree_seeds)
def fuzz_tree(data: bytes) -> None:
    try:
        nodes = records.decode_tree(data)
    except IntegrityError:
        return
    names = [node.name for node in nodes]
    assert len(set(names)) == len(names)
    for node in nodes:
        check_node(node)


def _name_seeds() -> list[bytes]:
    return [b"a", b"..", b".", b"", b"a/b", b"a\0", "é".encode()]


@harness("records.check_name", "UnsafeSnapshot", 40_000, _name_seeds)
def fuzz_tree_name(data: bytes) -> None:
    try:
        records.check_name(data)
    except records.UnsafeSnapshot:
        return
    assert data not in (b"", b".", b"..") and b"/" not in data and b"\0" not in data


def _snapshot_doc() -> records.Snapshot:
    return records.Snapshot(
        time="2026-01-02T03:04:05.000006+00:00",
        end_time="2026-01-02T03:05:05.000006+00:00",
        host="h",
        user="u",
        source="files",
        kind="files",
        backup_type="full",
        paths=("/a",),
        tree=bytes(32),
        tags=("t",),
        parent="ab" * 32,
        tier="gold",
        stats={"files_new": 1, "duration_s": 0.5},
        facts={"start_lsn": "0/1"},
        program="medvault 0.1.0",
        origin=None,
    )


def _snapshot_seeds() -> list[bytes]:
    snap = _snapshot_doc()
    doc = {"v": 1, **records.snapshot_fields(snap)}
    return [
        records.encode_snapshot(snap),
        msgpack.packb({**doc, "time": 5}),
        msgpack.packb({**doc, "time": "2026-01-02T03:04:05"}),
        msgpack.packb({**doc, "paths": [1, 2]}),
        msgpack.packb({**doc, "tree": "x"}),
    ]


@harness(
    "records.decode_snapshot (sealed, fuzzed payload)", "IntegrityError", 60_000, _snapshot_seeds
)
def fuzz_snapshot(data: bytes) -> None:
    repo = world().repo
    try:
        plaintext = repo.unseal(_sealed(data, KIND_SNAPSHOT), KIND_SNAPSHOT)
        snap = records.decode_snapshot(plaintext, "ab" * 32)
    except IntegrityError:
        return
    check_snapshot(snap)
    repo.newest([snap])


def _facts_seeds() -> list[bytes]:
    physical = {
        "pg_version_num": 150008,
        "pg_version": "15.8",
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
        "backup_label": "START WAL LOCATION: 0/2000028\n",
        "tablespace_map": "",
        "checksum_failures": [{"file": "base/5/1", "relation": "r", "blocks": [3]}],
    }
    logical = {
        "database": "emr",
        "server_version": "15.8",
        "server_version_num": 150008,
        "snapshot_time": "2026-03-02T11:00:00+01:00",
        "encoding": "UTF8",
        "lc_collate": "C",
        "lc_ctype": "C",
        "system_identifier": None,
        "dump_format": "custom",
        "dump_compression": "none",
        "pg_dump_version": "pg_dump (PostgreSQL) 15.8",
        "row_counts": {"public.t": 2},
    }
    return [
        b"\0" + msgpack.packb(physical),
        b"\0" + msgpack.packb({**physical, "stop_lsn": "0/-1", "timeline": True}),
        b"\0" + msgpack.packb({**physical, "checksum_failures": [{"blocks": [-1]}]}),
        b"\1" + msgpack.packb(logical),
        b"\1" + msgpack.packb({**logical, "row_counts": {"t": 2.5}}),
    ]


@harness(
    "postgres/facts.py PhysicalFacts/LogicalFacts.from_map (a decoded snapshot's facts map)",
    "IntegrityError",
    30_000,
    _facts_seeds,
)
def fuzz_snapshot_facts(data: bytes) -> None:
    from medvault.postgres.facts import LogicalFacts, PhysicalFacts

    cursor = Cursor(data)
    record = PhysicalFacts if cursor.byte() % 2 == 0 else LogicalFacts
    try:
        doc = msgpack.unpackb(cursor.rest())
    except (ValueError, msgpack.UnpackException):
        return
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        return  # decode_snapshot refuses such a facts map before anyone reads it
    try:
        facts = record.from_map(doc)
    except IntegrityError:
        return
    assert record.from_map(facts.to_map()) == facts, facts


# Locks ---------------------------------------------------------------------------------------


def _lock_doc() -> dict[str, Any]:
    return {
        "v": 2,
        "exclusive": False,
        "scope": "",
        "host": "db1",
        "namespace": "x/pid:[1]",
        "pid": 4242,
        "process_start": "123",
        "user": "postgres",
        "purpose": "backup of files",
        "created": 1795436292.37,
        "refreshed": 1795436592.40,
        "lease": 1800.0,
    }


def _lock_seeds() -> list[bytes]:
    doc = _lock_doc()
    return [
        json.dumps(doc).encode(),
        json.dumps({**doc, "refreshed": 10**300}).encode(),
        json.dumps({**doc, "pid": True}).encode(),
        b"[" * 50 + b"]" * 50,
    ]


def _raised_by(exc: BaseException, function: str) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == function


LOCK_NAME = "locks/" + "ab" * 16


@harness(
    "locks.parse_lock",
    "ValueError raised by parse_lock itself, naming the defect",
    80_000,
    _lock_seeds,
)
def fuzz_lock(data: bytes) -> None:
    try:
        lock = parse_lock(LOCK_NAME, data, 1795436592.0)
    except ValueError as exc:
        if _raised_by(exc, "parse_lock"):
            return
        raise
    check_lock(lock, 1795436600.0)


def _lock_listing_seeds() -> list[bytes]:
    return [*_with_prefix(bytes([32]) + b"ab" * 16, _lock_seeds()), b"\x03a b{}"]


@harness(
    "locks.read_locks (planted objects under locks/, any name)",
    "nothing: malformed locks are listed as such",
    20_000,
    _lock_listing_seeds,
)
def fuzz_lock_listing(data: bytes) -> None:
    cursor = Cursor(data)
    name = "locks/" + file_name(cursor.sized())
    w = world()
    with w.planted(name, cursor.rest()):
        table = read_locks(w.repo.backend)
    for lock in table.locks:
        check_lock(lock, 1795436600.0)
    for bad in table.malformed:
        assert isinstance(bad.describe(), str)
    table.live()
    table.stale()


# Key slots and the master key ------------------------------------------------------------

SLOT_ID = "cd" * 16
# Passphrase slots whose KDF asks for more than this are not derived here: the cost of a
# slot within the caps is by design, and the caps themselves are the key-slot branch's.
CHEAP_KDF = {"memory_kib": 1024, "iterations": 4, "lanes": 4}


def _slot_seeds() -> list[bytes]:
    w = world()
    master = w.repo.master
    keyfile = KeySlot.create(master, Credential(keyfile_secret=w.keyfile_secret))
    doc = json.loads(keyfile.to_json())
    passphrase = {
        **doc,
        "kind": "passphrase",
        "kdf": {"algorithm": "argon2id", "salt": "AAAAAAAAAAAAAAAAAAAAAA==", **CHEAP_KDF},
    }
    return [
        keyfile.to_json(),
        json.dumps(passphrase).encode(),
        json.dumps({**doc, "nonce": 5}).encode(),
        json.dumps({**passphrase, "kdf": {**passphrase["kdf"], "salt": "AA=="}}).encode(),
    ]


def _cheap(kdf: object) -> bool:
    if not isinstance(kdf, dict):
        return True  # refused before any derivation
    for name, limit in CHEAP_KDF.items():
        value = kdf.get(name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and math.isfinite(value) and limit < value <= 2**40:
            return False
    return True


@harness(
    "keys.KeySlot.from_json + open_master_key (passphrase and key-file credentials)",
    "IntegrityError, WrongPassphrase",
    30_000,
    _slot_seeds,
)
def fuzz_key_slot(data: bytes) -> None:
    w = world()
    try:
        slot = KeySlot.from_json(SLOT_ID, data)
    except IntegrityError:
        return
    credentials = [Credential(keyfile_secret=w.keyfile_secret)]
    if _cheap(slot.kdf):
        credentials.append(Credential(passphrase=b"pass"))
    for credential in credentials:
        try:
            master, _ = open_master_key([slot], credential)
        except (IntegrityError, WrongPassphrase):
            continue
        check_master(master)


def _master_seeds() -> list[bytes]:
    master = world().repo.master
    doc = msgpack.unpackb(master.to_bytes())
    return [
        master.to_bytes(),
        msgpack.packb({**doc, "data_keys": []}),
        msgpack.packb({**doc, "current": b"x" * 16}),
        msgpack.packb([1, 2]),
    ]


@harness(
    "keys.MasterKey.from_bytes via open_master_key (key-file slot, fuzzed plaintext)",
    "IntegrityError, WrongPassphrase",
    30_000,
    _master_seeds,
)
def fuzz_master_key(data: bytes) -> None:
    w = world()
    nonce = b"\1" * 12
    template = KeySlot.create(w.repo.master, Credential(keyfile_secret=w.keyfile_secret))
    template.slot_id = SLOT_ID
    template.nonce = nonce
    template.wrapped = AESGCM(w.keyfile_secret).encrypt(nonce, data, SLOT_ID.encode())
    try:
        master, _ = open_master_key([template], Credential(keyfile_secret=w.keyfile_secret))
    except (IntegrityError, WrongPassphrase):
        return
    check_master(master)


def _keyfile_seeds() -> list[bytes]:
    import base64

    secret = base64.b64encode(bytes(32))
    return [
        b"medvault-keyfile-v1\n" + secret + b"\n",
        b"medvault-keyfile-v1\n" + secret[:-4] + b"\n",
        b"medvault-keyfile-v1\n\xff\n",
    ]


_KEYFILE = Path(tempfile.gettempdir()) / f"medvault-fuzz-keyfile-{os.getpid()}"


@harness("keys.read_keyfile", "UsageError", 20_000, _keyfile_seeds)
def fuzz_keyfile(data: bytes) -> None:
    _KEYFILE.write_bytes(data)
    try:
        secret = read_keyfile(_KEYFILE)
    except UsageError:
        return
    finally:
        _KEYFILE.unlink()
    assert isinstance(secret, bytes) and len(secret) == 32


# The repository config -----------------------------------------------------------------------


def _config_seeds() -> list[bytes]:
    w = world()
    raw = w.repo.config.to_json(w.repo.master)
    doc = json.loads(raw)
    return [
        raw,
        json.dumps({**doc, "version": 2}).encode(),
        json.dumps({**doc, "compression": {"level": "Infinity"}})
        .replace('"Infinity"', "Infinity")
        .encode(),
        json.dumps({**doc, "chunker": {**doc["chunker"], "avg_size": "x"}}).encode(),
        json.dumps({**doc, "mac": "é"}).encode(),
        b"[" * 100_000,
    ]


@harness(
    "repo.RepoConfig.parse + verify",
    "IntegrityError, UnsupportedFormat",
    60_000,
    _config_seeds,
)
def fuzz_config(data: bytes) -> None:
    w = world()
    try:
        config, doc = RepoConfig.parse(data, "/repo")
    except (IntegrityError, UnsupportedFormat):
        return
    check_config(config)
    try:
        config.verify(doc, w.repo.master)
    except IntegrityError:
        return


# Sealed operational records ------------------------------------------------------------------


def _record_seeds(docs: list[Any]) -> list[bytes]:
    return [json.dumps(doc).encode() for doc in docs] + [b"[" * 5000, b"1e999", b"{}"]


def _hold_seeds() -> list[bytes]:
    hold = asdict(holds.Hold("ab" * 32, "court order", "u", "h", "2026-01-01T00:00:00+00:00"))
    return _record_seeds([hold, {**hold, "time": 5}, [hold], {**hold, "extra": 1}])


def _sealed_record(plaintext: bytes, kind: bytes, name: str) -> bytes:
    """A well-formed record sealed under its name around any plaintext, as a holder of the
    key writes it (Repository.store_record)."""
    master = world().repo.master
    encoded = compression.encode(plaintext, 3)
    return crypto.seal_object(master.current, encoded, crypto.record_aad(kind, name))


def _planted_sealed(cursor_data: bytes, kind: bytes, name: str) -> bytes:
    """Sealed around the input as the record `name`, or (first byte odd) the input as it
    is: garbage."""
    cursor = Cursor(cursor_data)
    garbage = cursor.byte() & 1
    rest = cursor.rest()
    return rest if garbage else _sealed_record(rest, kind, name)


@harness(
    "holds.list_holds (planted hold objects, sealed or not)",
    "nothing: an unreadable hold is kept, with a warning",
    20_000,
    lambda: _with_prefix(b"\0", _hold_seeds()),
)
def fuzz_hold(data: bytes) -> None:
    w = world()
    name = f"holds/{'ab' * 32}"
    with w.planted(name, _planted_sealed(data, holds.KIND_HOLD, name)):
        found = holds.list_holds(w.repo)
    assert len(found) == 1
    check_hold(found[0])


def _drill_seeds() -> list[bytes]:
    result = drills.DrillResult("ab" * 32, "files", "files", "2026-01-01T00:00:00+00:00")
    result.checks.append(drills.Check("restore", True, "ok", 1.5))
    doc = asdict(result)
    return _record_seeds(
        [doc, {**doc, "checks": [1]}, {**doc, "rto_s": "x"}, [doc], {**doc, "ok": "yes"}]
    )


@harness(
    "drills.list_results (planted drill records, sealed or not)",
    "nothing: an unreadable record is left out, with a warning",
    20_000,
    lambda: _with_prefix(b"\0", _drill_seeds()),
)
def fuzz_drill(data: bytes) -> None:
    w = world()
    name = "drills/20260101T000000Z-abababababab"
    with w.planted(name, _planted_sealed(data, KIND_DRILL, name)):
        results = drills.list_results(w.repo)
    for result in results:
        check_drill(result)


def _condemned_seeds() -> list[bytes]:
    doc = {"time": 1795436292.5, "packs": ["ab" * 32]}
    return _record_seeds(
        [doc, {**doc, "time": 10**400 // 10**100}, {**doc, "packs": "abc"}, {**doc, "packs": [1]}]
    )


@harness(
    "prune.read_condemned (planted records, sealed or not)",
    "nothing: an unreadable record is ignored, with a warning",
    20_000,
    lambda: _with_prefix(b"\0", _condemned_seeds()),
)
def fuzz_condemned(data: bytes) -> None:
    w = world()
    name = f"{prune.FOLDER}/20260101T000000Z-abcd1234"
    with w.planted(name, _planted_sealed(data, prune.KIND_CONDEMNED, name)):
        found = prune.read_condemned(w.repo)
    for record in found:
        assert isinstance(record.created, float) and math.isfinite(record.created), record
        assert all(_hex(pack, 64) for pack in record.packs), record


def _waits_seeds() -> list[bytes]:
    doc = {"record": f"{prune.FOLDER}/20260101T000000Z-abcd1234", "locks": [LOCK_NAME]}
    return _record_seeds([doc, {**doc, "locks": 5}, {**doc, "locks": [[1]]}])


@harness(
    "prune.read_waits (planted records, sealed or not)",
    "nothing: an unreadable record is ignored, with a warning",
    20_000,
    lambda: _with_prefix(b"\0", _waits_seeds()),
)
def fuzz_waits(data: bytes) -> None:
    w = world()
    name = f"{prune.WAITS_FOLDER}/20260101T000000Z-abcd1234"
    with w.planted(name, _planted_sealed(data, prune.KIND_WAITS, name)):
        waits = prune.read_waits(w.repo)
    for leaf, locks in waits.items():
        assert isinstance(leaf, str)
        assert all(re.fullmatch("locks/[0-9a-f]{32}", lock) for lock in locks), locks


# Object names in every folder -----------------------------------------------------------------


def _listing_readers() -> list[tuple[str, Callable[[], object]]]:
    w = world()
    return [
        ("snapshots", w.repo.list_snapshots),
        ("index", w.repo.load_index),
        ("keys", lambda: w.repo.read_key_slots(w.repo.backend)),
        ("holds", lambda: holds.list_holds(w.repo)),
        ("holds/released", lambda: holds.list_holds(w.repo)),
        ("drills", lambda: drills.list_results(w.repo)),
        (prune.FOLDER, lambda: prune.read_condemned(w.repo)),
        (prune.WAITS_FOLDER, lambda: prune.read_waits(w.repo)),
        ("locks", lambda: read_locks(w.repo.backend)),
        (f"wal/{SOURCE}", w.archive.names),
    ]


def _object_name_seeds() -> list[bytes]:
    return [bytes([i]) + name for i in range(10) for name in (b"a b", b"ab" * 32, b"-x", b"\xff")]


@harness(
    "every listing reader (snapshots, index, keys, holds, drills, prune, locks, WAL) "
    "over a planted object of any name",
    "nothing: what is not an object is not listed, an unreadable object is skipped",
    30_000,
    _object_name_seeds,
)
def fuzz_object_names(data: bytes) -> None:
    w = world()
    cursor = Cursor(data)
    readers = _listing_readers()
    folder, read = readers[cursor.byte() % len(readers)]
    name = file_name(cursor.sized())
    with w.planted(f"{folder}/{name}", cursor.rest()):
        read()


# The WAL archive -------------------------------------------------------------------------------


def _cluster_seeds() -> list[bytes]:
    doc = {"system_identifier": "7301234567890123456", "segment_size": 16777216, "created": "x"}
    return _with_prefix(
        b"\0",
        [
            *_record_seeds(
                [doc, {**doc, "segment_size": 3}, {**doc, "system_identifier": [1]}, [doc]]
            ),
            b'{"system_identifier": 1, "segment_size": Infinity, "created": 1}',
        ],
    )


@harness(
    "wal.WalArchive.cluster (planted cluster record, sealed or not)",
    "IntegrityError",
    20_000,
    _cluster_seeds,
)
def fuzz_wal_cluster(data: bytes) -> None:
    w = world()
    name = f"wal/{SOURCE}/cluster"
    with w.planted(name, _planted_sealed(data, KIND_WAL_CLUSTER, name)):
        try:
            record = w.archive.cluster()
        except IntegrityError:
            return
    assert record is not None
    check_cluster(record)


SEGMENT_NAME = "000000010000000000000003"


def _wal_object_seeds() -> list[bytes]:
    encoded = compression.encode(b"wal bytes " * 100, 1)
    return [b"\0" + encoded, b"\0\0raw", b"\0\1", b"\1garbage", b"\0" + encoded[:20]]


@harness(
    "wal.WalArchive.fetch (planted WAL objects: garbage, or sealed around any payload)",
    "IntegrityError",
    25_000,
    _wal_object_seeds,
)
def fuzz_wal_object(data: bytes) -> None:
    w = world()
    cursor = Cursor(data)
    garbage = cursor.byte() & 1
    rest = cursor.rest()
    name = w.archive.object_name(SEGMENT_NAME)
    stored = rest if garbage else crypto.seal_object(w.kek, rest, crypto.record_aad(KIND_WAL, name))
    with w.planted(name, stored):
        try:
            found = w.archive.fetch(SEGMENT_NAME)
        except IntegrityError:
            return
    assert isinstance(found, bytes)


def _wal_name_seeds() -> list[bytes]:
    def two(first: str, second: str) -> bytes:
        return bytes([len(first)]) + first.encode() + bytes([len(second)]) + second.encode()

    return [
        two("00000001", SEGMENT_NAME),
        two("zz", SEGMENT_NAME),
        two("00000002", "00000002.history"),
        two("00000001", SEGMENT_NAME + ".partial"),
        two("0000000G", "0000000G0000000000000001"),
    ]


@harness(
    "wal.WalArchive.names, timeline_of (planted object names under wal/<source>/)",
    "nothing: names that are not WAL files are left out",
    20_000,
    _wal_name_seeds,
)
def fuzz_wal_names(data: bytes) -> None:
    w = world()
    cursor = Cursor(data)
    folder, leaf = file_name(cursor.sized()), file_name(cursor.sized())
    with w.planted(f"wal/{SOURCE}/{folder}/{leaf}", b"x"):
        names = w.archive.names()
        timelines = {w_name[:8] for w_name in names}
        for timeline in timelines:
            w.archive.names(int(timeline, 16))
    for name in names:
        _check_wal_name(name)


def _check_wal_name(name: str) -> None:
    assert 1 <= pglsn.segment_timeline(name) < U32 or name[:8] == "00000000"
    if pglsn.SEGMENT.match(name):
        assert 0 <= pglsn.segment_start_lsn(name, pglsn.DEFAULT_SEGMENT_SIZE) < U64


def _text_seeds() -> list[bytes]:
    return [
        b"16/B374D848",
        b"1\t0/3000000\tno recovery target specified\n2\t0/5000000\treason\n",
        b"-1/-1",
        b"1_0/0",
        b"\xd9\xa1/0",
        b"# comment\n\n+1 0/1",
        SEGMENT_NAME.encode(),
        b"00000002.history",
    ]


@harness(
    "postgres/lsn.py and timelines.py: parse_lsn, parse_history, check_name; timeline_of",
    "UsageError (names, LSNs), IntegrityError (history files)",
    80_000,
    _text_seeds,
)
def fuzz_wal_text(data: bytes) -> None:
    from medvault.repository.wal import timeline_of

    text = data.decode("ascii", "replace")
    try:
        lsn = pglsn.parse_lsn(text)
    except UsageError:
        pass
    else:
        assert _is_int(lsn, 0, U64), lsn
        assert pglsn.parse_lsn(pglsn.format_lsn(lsn)) == lsn
    try:
        history = pgtimelines.parse_history(text)
    except IntegrityError:
        pass
    else:
        for timeline, switch in history:
            assert _is_int(timeline, 1, U32) and _is_int(switch, 0, U64), history
            pgtimelines.history_name(timeline)
    with suppress(UsageError):
        timeline_of(text)
    try:
        name = pglsn.check_name(text)
    except UsageError:
        return
    _check_wal_name(name)


def _segment_seeds() -> list[bytes]:
    # PostgreSQL's smallest segment is 1 MiB; the header check itself takes any power of 2.
    size = 64
    header = struct.pack("<HHIQQII", 0xD116, 2, 1, 3 * size, 7301234567890123456, size, 8192)
    return [bytes([0]) + header + bytes(size - len(header)), bytes([1]) + header, b"\0"]


_SEGMENT_NAMES = [
    SEGMENT_NAME,
    "000000010000000000000000",
    "0000000100000001000000FF",
    "000000010000000000000003.partial",
    "FFFFFFFFFFFFFFFFFFFFFFFF",
]


@harness(
    "postgres/walrecords.py read_segment_header",
    "IntegrityError",
    30_000,
    _segment_seeds,
)
def fuzz_wal_segment_header(data: bytes) -> None:
    cursor = Cursor(data)
    name = _SEGMENT_NAMES[cursor.byte() % len(_SEGMENT_NAMES)]
    try:
        header = pgwalrecords.read_segment_header(name, cursor.rest())
    except IntegrityError:
        return
    assert header.system_identifier.isdigit()
    assert _is_int(header.segment_size, 1, 2**30 + 1)


# -- running ---------------------------------------------------------------------------------


def printable(data: bytes) -> str:
    text = repr(data)
    return text if len(text) < 300 else text[:300] + "..."


# CPU seconds one input may take. Parsers of a few kilobytes answer in milliseconds; this is
# far above that (instrumented code on a loaded machine) and far below "loops for ever".
CPU_BUDGET_S = 5.0
# Address space one harness process may add beyond what it had at start: a parser that asks
# for more on a small input (a length prefix claiming gigabytes) meets MemoryError, a bug.
MEMORY_HEADROOM = 1 << 30


def run_bounded(harness: Harness, data: bytes) -> None:
    started = time.process_time()
    harness.run(data)
    spent = time.process_time() - started
    if spent > CPU_BUDGET_S:
        raise AssertionError(f"{harness.name}: {spent:.1f} s of CPU on {len(data)} bytes")


@contextmanager
def bounded_memory() -> Iterator[None]:
    """RLIMIT_AS at what the process maps now plus MEMORY_HEADROOM, restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm", encoding="ascii") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    limit = mapped + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
