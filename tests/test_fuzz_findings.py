"""Inputs the fuzz harnesses (tests/fuzz/) found: for each defect the smallest input that
showed it, now answered with the parser's own error. Stored objects are hostile input: anyone
with write access to the store can plant garbage, and anyone holding the key (a compromised
client) can seal any payload."""

from __future__ import annotations

import json
import struct

import msgpack
import pytest
from tests.fuzz.harnesses import bounded_memory

from medvault.backends.local import LocalBackend
from medvault.errors import IntegrityError
from medvault.repository import compression, records
from medvault.repository.index import decode_index
from medvault.repository.keys import Credential
from medvault.repository.repo import RepoConfig, Repository


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
