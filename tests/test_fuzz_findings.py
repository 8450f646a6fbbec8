"""Inputs the fuzz harnesses (tests/fuzz/) found: for each defect the smallest input that
showed it, now answered with the parser's own error. Stored objects are hostile input: anyone
with write access to the store can plant garbage, and anyone holding the key (a compromised
client) can seal any payload."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from tests.fuzz.harnesses import bounded_memory

from medvault.backends.base import validate_name
from medvault.backends.local import LocalBackend
from medvault.errors import BackendError, IntegrityError, UsageError
from medvault.policy import holds
from medvault.postgres import lsn as pglsn
from medvault.postgres import timelines as pgtimelines
from medvault.repository import compression, prune, records
from medvault.repository.crypto import record_aad, seal_object
from medvault.repository.index import decode_index
from medvault.repository.keys import Credential
from medvault.repository.locks import parse_lock
from medvault.repository.repo import RepoConfig, Repository
from medvault.repository.wal import WalArchive
from medvault.verification import drills


def test_tree_entry_with_a_text_name_is_malformed() -> None:
    tree = msgpack.packb({"v": 1, "nodes": [{"n": "text", "t": "file"}]})
    with pytest.raises(IntegrityError, match="without a name"):
        records.decode_tree(tree)


@pytest.mark.parametrize(
    ("field", "value"),
    [("m", "rwx"), ("m", 2**40), ("u", -1), ("s", 1.5), ("c", [b"short"]), ("st", "x")],
)
def test_tree_entry_with_a_malformed_field_is_refused(field: str, value: object) -> None:
    node = {"n": b"a", "t": "dir", "st": bytes(32), field: value}
    with pytest.raises(IntegrityError, match="malformed"):
        records.decode_tree(msgpack.packb({"v": 1, "nodes": [node]}))


def _snapshot(**changes: object) -> bytes:
    doc = {
        "v": 1,
        "time": "2026-01-02T03:04:05.000006+00:00",
        "end_time": "2026-01-02T03:05:05.000006+00:00",
        "host": "h",
        "user": "u",
        "source": "files",
        "kind": "files",
        "type": "full",
        "paths": ["/a"],
        "tree": bytes(32),
        "tags": [],
        "parent": None,
        "tier": None,
        "stats": {},
        "facts": {},
        "program": "medvault",
    }
    return msgpack.packb({**doc, **changes})


def test_snapshot_as_written_decodes() -> None:
    snap = records.decode_snapshot(_snapshot(), "ab" * 32)
    assert snap.paths == ("/a",) and snap.origin is None and snap.taken.year == 2026


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time", 5),
        ("time", "2026-01-02T03:04:05"),  # no zone: `latest` would compare naive with aware
        ("end_time", "yesterday"),
        ("paths", [1]),
        ("tree", "x"),
        ("parent", b"x"),
        ("stats", []),
        ("host", None),
    ],
)
def test_snapshot_with_a_malformed_field_is_refused(field: str, value: object) -> None:
    with pytest.raises(IntegrityError, match=f"malformed '{field}'"):
        records.decode_snapshot(_snapshot(**{field: value}), "ab" * 32)


def zstd_frame_declaring(size: int) -> bytes:
    """A zstd frame whose header declares `size` bytes of content and that holds none: one
    empty raw block."""
    single_segment_8_byte_size = 0b11100000
    return (
        b"\x28\xb5\x2f\xfd"
        + bytes([single_segment_8_byte_size])
        + struct.pack("<Q", size)
        + b"\x01\x00\x00"
    )


def test_payload_declaring_a_terabyte_is_refused_before_allocating_it() -> None:
    with pytest.raises(IntegrityError, match="declares"):
        compression.decode(b"\x01" + zstd_frame_declaring(1 << 40))


def test_payload_declaring_gigabytes_allocates_nothing() -> None:
    with bounded_memory(), pytest.raises(IntegrityError, match="declares"):
        compression.decode(b"\x01" + zstd_frame_declaring(3 << 30))


def test_blob_longer_than_its_index_entry_says_is_refused() -> None:
    with pytest.raises(IntegrityError, match="index entry says 2"):
        compression.decode(b"\x00abc", 2)


@pytest.mark.parametrize(
    ("pack", "problem"),
    [
        ({"id": bytes(32), "key": bytes(81), "blobs": "x" * 49}, "truncated"),
        ({"id": b"\x01", "key": bytes(81), "blobs": b""}, "not 32 bytes"),
        ({"id": bytes(32), "key": 5, "blobs": b""}, "damaged key block"),
    ],
)
def test_index_with_a_malformed_pack_is_refused(pack: object, problem: str) -> None:
    payload = msgpack.packb({"v": 1, "packs": [pack], "supersedes": []})
    with pytest.raises(IntegrityError, match=problem):
        decode_index(payload)


@pytest.fixture(scope="module")
def keyfile_repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    root = tmp_path_factory.mktemp("fuzz-findings") / "repo"
    return Repository.init(LocalBackend(root), Credential(keyfile_secret=bytes(range(32))))


def _config(repo: Repository, **changes: object) -> bytes:
    doc = json.loads(repo.config.to_json(repo.master))
    return json.dumps({**doc, **changes}).encode()


def test_config_nested_too_deep_for_the_json_parser_is_damaged() -> None:
    with pytest.raises(IntegrityError, match="damaged"):
        RepoConfig.parse(b"[" * 100_000, "/repo")


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("compression", {"algorithm": "zstd", "level": float("inf")}, "compression level"),
        ("compression", {"algorithm": "zstd", "level": "3"}, "compression level"),
        ("pack_size", 2**40, "pack size"),
        (
            "chunker",
            {
                "algorithm": "fastcdc2020",
                "min_size": 64,
                "avg_size": "x",
                "max_size": 1024,
                "normalization": 1,
            },
            "avg_size",
        ),
        (
            "chunker",
            {
                "algorithm": "fastcdc2020",
                "min_size": 64,
                "avg_size": 256,
                "max_size": 1 << 40,
                "normalization": 1,
            },
            "max_size",
        ),
    ],
)
def test_config_with_a_field_out_of_range_is_damaged(
    keyfile_repo: Repository, field: str, value: object, problem: str
) -> None:
    with pytest.raises(IntegrityError, match=problem):
        RepoConfig.parse(_config(keyfile_repo, **{field: value}), "/repo")


def test_config_with_a_non_ascii_mac_is_altered(keyfile_repo: Repository) -> None:
    config, doc = RepoConfig.parse(_config(keyfile_repo, mac="é"), "/repo")
    with pytest.raises(IntegrityError, match="altered"):
        config.verify(doc, keyfile_repo.master)


def _plant(repo: Repository, name: str, data: bytes) -> Path:
    path = Path(repo.backend.url) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_lock_nested_too_deep_for_the_json_parser_is_malformed() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        parse_lock("locks/" + "ab" * 16, b"[" * 100_000, None)


def test_lock_refreshed_at_a_time_no_float_holds_is_malformed() -> None:
    doc = {
        "v": 2, "exclusive": False, "scope": "", "host": "h", "namespace": "", "pid": 1,
        "process_start": "", "user": "u", "purpose": "p", "created": 1.0,
        "refreshed": 10**400, "lease": 60.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="'refreshed' is not a finite number"):
        parse_lock("locks/" + "ab" * 16, json.dumps(doc).encode(), None)


def test_hold_record_with_a_number_for_its_time_is_kept_as_unreadable(
    keyfile_repo: Repository,
) -> None:
    hold = {"snapshot": "ab" * 32, "reason": "r", "user": "u", "host": "h", "time": 5}
    name = f"holds/{'ab' * 32}"
    path = _plant(keyfile_repo, name, _seal(keyfile_repo, hold, b"hold", name))
    try:
        (found,) = holds.list_holds(keyfile_repo)
    finally:
        path.unlink()
    assert found.reason == "(unreadable hold record)" and found.snapshot == "ab" * 32


def _seal(repo: Repository, doc: object, kind: bytes, name: str) -> bytes:
    """The record as its writer seals it under `name`: well-formed, authentic, and with a
    payload no honest writer would write."""
    plaintext = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return seal_object(
        repo.master.current, compression.encode(plaintext, 3), record_aad(kind, name)
    )


@pytest.mark.parametrize("doc", [[1], {"snapshot": "a", "source": "s", "kind": "k",
                                        "started": "t", "rto_s": "x"}])  # fmt: skip
def test_drill_record_that_is_malformed_is_left_out_with_a_warning(
    keyfile_repo: Repository, doc: object
) -> None:
    name = "drills/20260101T000000Z-ab"
    path = _plant(keyfile_repo, name, _seal(keyfile_repo, doc, b"drill", name))
    try:
        assert drills.list_results(keyfile_repo) == []
    finally:
        path.unlink()
    assert "drill record drills/20260101T000000Z-ab is unreadable" in keyfile_repo.warnings[-1]


@pytest.mark.parametrize(
    "doc",
    [{"time": 10**400, "packs": []}, {"time": 1.0, "packs": "abc"}, {"time": 1, "packs": [1]}],
)
def test_condemned_record_that_is_malformed_is_ignored(
    keyfile_repo: Repository, doc: object
) -> None:
    name = f"{prune.FOLDER}/20260101T000000Z-abcd1234"
    path = _plant(keyfile_repo, name, _seal(keyfile_repo, doc, prune.KIND_CONDEMNED, name))
    try:
        assert prune.read_condemned(keyfile_repo) == []
    finally:
        path.unlink()
    assert f"prune record {name} is unreadable" in keyfile_repo.warnings[-1]


def test_waits_record_naming_something_other_than_locks_is_ignored(
    keyfile_repo: Repository,
) -> None:
    name = f"{prune.WAITS_FOLDER}/20260101T000000Z-abcd1234"
    doc = {"record": "x", "locks": [[1]]}
    path = _plant(keyfile_repo, name, _seal(keyfile_repo, doc, prune.KIND_WAITS, name))
    try:
        assert prune.read_waits(keyfile_repo) == {}
    finally:
        path.unlink()


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (b'{"system_identifier": "1", "segment_size": Infinity, "created": ""}', "segment size"),
        (b'{"system_identifier": "1", "segment_size": 3, "created": ""}', "power of 2"),
        (b'{"system_identifier": [1], "segment_size": 16, "created": ""}', "not a number"),
    ],
)
def test_wal_cluster_record_that_is_malformed_is_damaged(
    keyfile_repo: Repository, doc: bytes, problem: str
) -> None:
    archive = WalArchive(keyfile_repo, "db1")
    name = "wal/db1/cluster"
    path = _plant(keyfile_repo, name, _seal(keyfile_repo, doc, b"wal-cluster", name))
    try:
        with pytest.raises(IntegrityError, match=problem):
            archive.cluster()
    finally:
        path.unlink()


def test_wal_object_in_a_folder_that_is_not_a_timeline_is_no_wal(
    keyfile_repo: Repository,
) -> None:
    path = _plant(keyfile_repo, "wal/db1/zz/000000010000000000000003", b"x")
    try:
        assert WalArchive(keyfile_repo, "db1").names() == []
    finally:
        path.unlink()


@pytest.mark.parametrize("text", ["-1/-1", "+1/0", "1_0/0", "\u0661/0"])
def test_lsn_with_a_sign_underscore_or_foreign_digit_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="is not an LSN"):
        pglsn.parse_lsn(text)


@pytest.mark.parametrize("line", ["-1\t0/1\tr", "+2\t0/1\tr", "1_0\t0/1\tr", "4294967296\t0/1"])
def test_history_line_with_an_impossible_timeline_is_malformed(line: str) -> None:
    with pytest.raises(IntegrityError, match="line 1 is malformed"):
        pgtimelines.parse_history(line)


@pytest.mark.parametrize(
    "name", ["000000010000000000000003\n", "00000001.history\n", "locks/" + "ab" * 16 + "\n"]
)
def test_name_ending_in_a_newline_is_no_object_or_wal_name(name: str) -> None:
    assert not pglsn.is_archivable(name)
    with pytest.raises(BackendError):
        validate_name(name)


@pytest.mark.parametrize(
    ("folder", "read"),
    [
        ("snapshots", lambda repo: repo.list_snapshots()),
        ("index", lambda repo: repo.load_index()),
        ("holds", holds.list_holds),
        ("drills", drills.list_results),
        (prune.FOLDER, prune.read_condemned),
        ("keys", lambda repo: repo.read_key_slots(repo.backend)),
    ],
)
def test_file_whose_name_no_object_has_is_not_listed(
    keyfile_repo: Repository, folder: str, read: Callable[[Repository], object]
) -> None:
    path = _plant(keyfile_repo, f"{folder}/a b", b"planted")
    try:
        read(keyfile_repo)
        assert not [o.name for o in keyfile_repo.backend.list(folder) if " " in o.name]
    finally:
        path.unlink()
