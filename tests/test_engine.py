"""The storage engine's promises, checked on real repositories in-process."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from conftest import PASSWORD, reopen
from medvault.backends import open_backend
from medvault.backends.base import validate_name
from medvault.errors import BackendError, IntegrityError, WrongPassphrase
from medvault.repository import compression
from medvault.repository.crypto import open_object, seal_object
from medvault.repository.index import MasterIndex, PackRecord
from medvault.repository.keys import Credential
from medvault.repository.packs import DATA_BLOB, PackEntry, open_blob, read_pack_header
from medvault.repository.repo import KIND_INDEX, KIND_SNAPSHOT, Repository, pack_name
from medvault.repository.writer import BlobSink
from medvault.sources.files import BackupOptions, backup_files

BACKENDS = ("local", "s3")


def store(repo: Repository, *blobs: bytes) -> list[bytes]:
    sink = BlobSink(repo)
    ids = [sink.store(blob, DATA_BLOB) for blob in blobs]
    sink.flush()
    return ids


def test_blobs_round_trip_through_a_reopened_repository(repo: Repository) -> None:
    text, noise = b"progress note " * 10_000, os.urandom(100_000)
    ids = store(repo, text, noise, b"")
    again = reopen(repo)
    assert [again.load_blob(i) for i in ids] == [text, noise, b""]


def test_blob_ids_are_keyed_so_equal_content_differs_between_repositories(
    repo: Repository, tmp_path: Path
) -> None:
    other = Repository.init(open_backend(str(tmp_path / "other")), Credential(passphrase=b"x"))
    assert repo.blob_id(b"same") != other.blob_id(b"same")
    assert repo.blob_id(b"same") == reopen(repo).blob_id(b"same")


def test_compressible_data_shrinks_and_random_data_is_stored_raw() -> None:
    text = b"blood pressure 120/80 " * 5000
    assert compression.encode(text, 1)[0] == compression.ZSTD
    assert len(compression.encode(text, 1)) < len(text) // 10
    noise = os.urandom(50_000)
    assert compression.encode(noise, 1) == bytes([compression.RAW]) + noise
    assert compression.decode(compression.encode(text, 1)) == text


def test_stored_data_is_not_readable_without_the_key(repo: Repository) -> None:
    secret = b"Patient: Jane Doe, MRN 0012345, diagnosis: " * 100
    store(repo, secret)
    for path in Path(repo.backend.url).rglob("*"):
        if path.is_file():
            assert b"Jane Doe" not in path.read_bytes()


def test_pack_header_lists_its_blobs_so_the_index_can_be_rebuilt(repo: Repository) -> None:
    ids = store(repo, b"one" * 1000, b"two" * 1000)
    (record,) = list(reopen(repo).index.packs())
    raw = repo.backend.load(pack_name(record.pack_id))
    _, entries = read_pack_header(repo.master.keks, raw)
    assert [e.blob_id for e in entries] == ids


def test_a_blob_presented_under_another_id_fails_authentication(repo: Repository) -> None:
    ids = store(repo, b"first" * 100, b"second" * 100)
    second = reopen(repo).index.lookup(ids[1])
    assert second is not None
    e = second.entry
    swapped = PackEntry(ids[0], DATA_BLOB, e.ordinal, e.offset, e.length, e.raw_length)
    sealed = repo.backend.load(pack_name(second.pack_id), e.offset, e.length)
    with pytest.raises(IntegrityError):
        open_blob(repo.content_key(second.key_block), swapped, sealed)


def test_metadata_objects_cannot_change_roles(repo: Repository) -> None:
    sealed = seal_object(repo.master.current, b"payload", KIND_INDEX)
    assert open_object(repo.master.keks, sealed, KIND_INDEX) == b"payload"
    with pytest.raises(IntegrityError):
        open_object(repo.master.keks, sealed, KIND_SNAPSHOT)


def test_index_finds_every_blob_across_merges() -> None:
    index = MasterIndex()
    ids = [os.urandom(32) for _ in range(70_000)]  # more than one merge batch
    for start in range(0, len(ids), 1000):
        entries = [
            PackEntry(i, DATA_BLOB, n, n * 10, 10, 10)
            for n, i in enumerate(ids[start : start + 1000])
        ]
        index.add_pack(PackRecord(f"{start:064x}", b"k" * 81, entries))
    index.merge()
    assert len(index) == len(ids)
    for probe in ids[::997]:
        location = index.lookup(probe)
        assert location is not None and location.entry.blob_id == probe
    assert index.lookup(os.urandom(32)) is None
    assert ids[12345] in index


def test_an_insertion_at_the_start_of_a_file_costs_only_nearby_chunks(
    repo: Repository, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    body = os.urandom(24_000_000)
    (data / "big.bin").write_bytes(body)
    first = backup_files(repo, BackupOptions("x", [str(data)], backup_type="full"))
    (data / "big.bin").write_bytes(b"inserted header" + body)
    second = backup_files(repo, BackupOptions("x", [str(data)], backup_type="full"))
    assert first.bytes_added > 23_000_000
    assert second.bytes_added < 3_000_000


def test_wrong_passphrase_is_refused(repo: Repository) -> None:
    with pytest.raises(WrongPassphrase):
        Repository.open(open_backend(repo.backend.url), Credential(passphrase=b"guess"))
    assert reopen(repo).config.repo_id == repo.config.repo_id
    assert PASSWORD


@pytest.mark.parametrize("name", ["../x", "/abs", "data/../../x", "", "a//b", ".hidden"])
def test_backend_refuses_names_that_are_not_plain(name: str) -> None:
    with pytest.raises(BackendError):
        validate_name(name)


def test_objects_are_never_overwritten_by_accident(repo: Repository) -> None:
    repo.backend.store("locks/abc", b"one")
    with pytest.raises(BackendError):
        repo.backend.store("locks/abc", b"two")
    assert repo.backend.load("locks/abc") == b"one"


def test_block_wise_chunking_cuts_exactly_where_whole_file_chunking_does(
    repo: Repository, tmp_path: Path
) -> None:
    from medvault.repository import chunker as chunker_module
    from medvault.repository.chunker import Chunker

    data = os.urandom(5_000_000) + b"report line\n" * 300_000 + os.urandom(3_000_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    cutter = Chunker(repo.config.chunker, repo.master.chunker_seed)
    whole = [bytes(c.data) for c in cutter._cdc.cut_buf(data)]
    original = chunker_module.READ_BLOCK
    try:
        for block in (original, 1_000_003, 9_000_000):
            chunker_module.READ_BLOCK = block
            with path.open("rb") as handle:
                assert list(cutter.chunks(handle)) == whole
    finally:
        chunker_module.READ_BLOCK = original


# -- the repository's API is closed ------------------------------------------------------

SOURCE = Path(__file__).resolve().parent.parent / "src" / "medvault"


def _attribute_uses(attr: str) -> list[tuple[Path, ast.Attribute]]:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == attr:
                found.append((path.relative_to(SOURCE), node))
    return found


def test_nothing_above_the_repository_reaches_into_its_backend() -> None:
    """Layers above ask the Repository (and WalArchive); only repository/ and backends/ see
    the store's objects."""
    outside = [
        f"{path}:{node.lineno}"
        for path, node in _attribute_uses("backend")
        if path.parts[0] not in ("repository", "backends")
    ]
    assert outside == []


def test_every_deletion_of_a_stored_object_is_in_deletion_py() -> None:
    """Deleting is the one dangerous operation: a reader finds all of it in one module."""
    elsewhere = []
    for path, node in _attribute_uses("delete"):
        target = node.value
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        allowed = path.parts[0] == "backends" or path == Path("repository/deletion.py")
        if "backend" in name and not allowed:
            elsewhere.append(f"{path}:{node.lineno}")
    assert elsewhere == []
