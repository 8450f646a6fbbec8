"""PostgreSQL page checksum verification against a real cluster made with --data-checksums,
and against PostgreSQL's own pg_checksums."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tests.pgcluster import PgCluster, make_pg_tempdir, run_as_postgres, running_clusters

from medvault.sources.postgres.checksums import (
    BLCKSZ,
    RELSEG_SIZE,
    PageVerifier,
    pg_checksum_pages,
    relation_file_info,
)

EVERYTHING = 2**64 - 1  # a start LSN after every page: judge them all, as pg_checksums does


@dataclass(frozen=True)
class StoppedCluster:
    cluster: PgCluster
    heap: Path  # the table's main fork, > 16 MiB so that pieces of 16 MiB + 3 bytes split it
    index: Path


@pytest.fixture(scope="module")
def stopped() -> Iterator[StoppedCluster]:
    base = make_pg_tempdir()
    with running_clusters() as clusters:
        cluster = PgCluster(base / "main")
        clusters.append(cluster)
        cluster.initdb(checksums=True)
        cluster.start()
        cluster.execute(
            "CREATE TABLE notes (id int PRIMARY KEY, body text);"
            "INSERT INTO notes SELECT g, md5(g::text) || repeat('x', 100)"
            " FROM generate_series(1, 150000) g;"
            "CREATE INDEX notes_body ON notes (body);"
        )
        cluster.execute("VACUUM notes")  # makes the _fsm and _vm forks
        cluster.execute("CHECKPOINT")
        heap = cluster.scalar("SELECT pg_relation_filepath('notes')")
        index = cluster.scalar("SELECT pg_relation_filepath('notes_body')")
        cluster.stop()
        yield StoppedCluster(cluster, cluster.datadir / heap, cluster.datadir / index)
    shutil.rmtree(base, ignore_errors=True)


def verify(
    data: bytes, *, segment: int = 0, start_lsn: int = EVERYTHING, piece: int = 0
) -> list[int]:
    verifier = PageVerifier(segment, start_lsn)
    piece = piece or max(len(data), 1)
    for offset in range(0, len(data), piece):
        verifier.feed(memoryview(data)[offset : offset + piece], offset)
    verifier.finish()
    return verifier.bad_blocks


def page_lsn(page: bytes) -> int:
    high, low = np.frombuffer(page[:8], dtype=np.uint32)
    return (int(high) << 32) | int(low)


def flipped(data: bytes, *positions: int) -> bytes:
    out = bytearray(data)
    for pos in positions:
        out[pos] ^= 0x5A
    return bytes(out)


@contextlib.contextmanager
def byte_flipped_on_disk(path: Path, position: int) -> Iterator[None]:
    original = path.read_bytes()
    path.write_bytes(flipped(original, position))
    try:
        yield
    finally:
        path.write_bytes(original)


def relation_files(datadir: Path) -> Iterator[tuple[Path, tuple[int, int]]]:
    for dirpath, _, names in os.walk(datadir):
        for name in names:
            path = Path(dirpath) / name
            info = relation_file_info(os.fsencode(path.relative_to(datadir)))
            if info is not None:
                yield path, info


def test_every_page_of_a_clean_cluster_verifies_and_matches_stored_checksums(
    stopped: StoppedCluster,
) -> None:
    files = pages = 0
    for path, (_, segment) in relation_files(stopped.cluster.datadir):
        data = path.read_bytes()
        assert verify(data, segment=segment) == [], path
        words = np.frombuffer(data, dtype=np.uint32).reshape(-1, BLCKSZ // 4)
        initialised = words.view(np.uint16)[:, 7] != 0  # pd_upper: new pages carry no checksum
        blocks = segment * RELSEG_SIZE + np.flatnonzero(initialised)
        stored = words.view(np.uint16)[initialised, 4]
        assert (pg_checksum_pages(words[initialised], blocks) == stored).all(), path
        files += 1
        pages += int(initialised.sum())
    assert files > 500
    assert pages > 5000


def test_a_flipped_byte_is_reported_at_its_block_as_pg_checksums_reports_it(
    stopped: StoppedCluster,
) -> None:
    block = 1234
    assert verify(flipped(stopped.heap.read_bytes(), block * BLCKSZ + 4000)) == [block]

    with byte_flipped_on_disk(stopped.heap, block * BLCKSZ + 4000):
        done = run_as_postgres(
            [
                str(stopped.cluster.bindir / "pg_checksums"),
                "--check",
                "-D",
                str(stopped.cluster.datadir),
            ],
            check=False,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    failures = re.findall(r'failed in file "([^"]+)", block (\d+)', done.stderr)
    assert failures == [(str(stopped.heap), str(block))]
    assert re.search(r"Bad checksums:\s+1\b", done.stdout)


def test_a_corrupt_index_page_is_reported(stopped: StoppedCluster) -> None:
    assert verify(flipped(stopped.index.read_bytes(), 5 * BLCKSZ + 100)) == [5]


def test_checksums_cover_the_block_number(stopped: StoppedCluster) -> None:
    """The same bytes read as segment 1 of the relation are blocks 131072+ and all fail."""
    data = stopped.index.read_bytes()
    pages = len(data) // BLCKSZ
    new = [k for k in range(pages) if data[k * BLCKSZ + 14 : k * BLCKSZ + 16] == b"\0\0"]
    expected = [RELSEG_SIZE + k for k in range(pages) if k not in new]
    assert verify(data, segment=1) == expected


def test_an_all_zero_new_page_is_fine_but_a_new_page_with_data_is_bad(
    stopped: StoppedCluster,
) -> None:
    data = bytearray(stopped.index.read_bytes()[: 8 * BLCKSZ])
    data += bytes(BLCKSZ)  # block 8: freshly extended
    assert verify(bytes(data)) == []
    data[8 * BLCKSZ + 5000] = 0x17  # pd_upper still 0, so "new", but not empty
    assert verify(bytes(data)) == [8]
    data[3 * BLCKSZ : 4 * BLCKSZ] = bytes(BLCKSZ)  # a header zeroed over real tuples
    data[3 * BLCKSZ + 20 : 3 * BLCKSZ + 30] = b"garbage!!!"
    assert verify(bytes(data)) == [3, 8]


@pytest.mark.parametrize("piece", [1000, BLCKSZ - 1, BLCKSZ, 3 * BLCKSZ + 5, 16 * 2**20 + 3])
def test_pieces_of_any_size_give_the_same_result(stopped: StoppedCluster, piece: int) -> None:
    data = stopped.heap.read_bytes()
    assert len(data) > 16 * 2**20 + 3 + BLCKSZ
    # around the first 16 MiB + 3 boundary, the first and the last page
    bad = [0, (16 * 2**20) // BLCKSZ - 1, (16 * 2**20) // BLCKSZ, len(data) // BLCKSZ - 1]
    corrupt = flipped(data, *(k * BLCKSZ + 7000 for k in bad))
    assert verify(corrupt, piece=piece) == bad


def test_pages_written_since_the_backup_started_are_not_judged(stopped: StoppedCluster) -> None:
    data = stopped.heap.read_bytes()
    block = 77
    lsn = page_lsn(data[block * BLCKSZ : (block + 1) * BLCKSZ])
    assert lsn > 0
    corrupt = flipped(data, block * BLCKSZ + 6000)
    assert verify(corrupt, start_lsn=lsn) == []  # pd_lsn >= start: maybe torn, WAL rewrites it
    assert verify(corrupt, start_lsn=lsn + 1) == [block]


def test_a_trailing_partial_page_is_ignored(stopped: StoppedCluster) -> None:
    data = stopped.index.read_bytes()
    verifier = PageVerifier(0, EVERYTHING)
    verifier.feed(data + b"\xff" * 3000, 0)  # the file was being extended as it was read
    verifier.finish()
    assert verifier.bad_blocks == []
    assert verifier.pages_seen == len(data) // BLCKSZ


def test_recheck_keeps_only_pages_that_are_still_bad_on_disk(
    stopped: StoppedCluster, tmp_path: Path
) -> None:
    data = stopped.index.read_bytes()
    on_disk = tmp_path / "16385"
    on_disk.write_bytes(flipped(data, 2 * BLCKSZ + 300))  # block 2 is really damaged
    verifier = PageVerifier(0, EVERYTHING)
    verifier.feed(flipped(data, 2 * BLCKSZ + 300, 6 * BLCKSZ + 300), 0)  # 6 was torn in reading
    verifier.finish()
    assert verifier.bad_blocks == [2, 6]
    fd = os.open(on_disk, os.O_RDONLY)
    try:
        verifier.recheck(fd)
    finally:
        os.close(fd)
    assert verifier.bad_blocks == [2]


def test_recheck_drops_pages_truncated_away(stopped: StoppedCluster, tmp_path: Path) -> None:
    data = stopped.index.read_bytes()
    on_disk = tmp_path / "16385"
    on_disk.write_bytes(data[: 4 * BLCKSZ])
    verifier = PageVerifier(0, EVERYTHING)
    verifier.feed(flipped(data, 6 * BLCKSZ + 300), 0)
    verifier.finish()
    fd = os.open(on_disk, os.O_RDONLY)
    try:
        verifier.recheck(fd)
    finally:
        os.close(fd)
    assert verifier.bad_blocks == []


def test_feed_refuses_a_gap() -> None:
    verifier = PageVerifier(0, EVERYTHING)
    verifier.feed(bytes(100), 0)
    with pytest.raises(ValueError, match="expected 100"):
        verifier.feed(bytes(100), 200)


@pytest.mark.parametrize(
    ("relpath", "info"),
    [
        (b"base/16384/16385", (16385, 0)),
        (b"base/16384/16385.2", (16385, 2)),
        (b"base/1/2619_fsm", (2619, 0)),
        (b"base/1/2619_vm.1", (2619, 1)),
        (b"base/16384/16390_init", (16390, 0)),
        (b"global/1262", (1262, 0)),
        (b"global/1262_vm", (1262, 0)),
        (b"pg_tblspc/16400/PG_15_202209061/16384/16401_fsm", (16401, 0)),
        (b"pg_tblspc/16400/PG_15_202209061/16384/16401.3", (16401, 3)),
        (b"global/pg_control", None),
        (b"global/pg_filenode.map", None),
        (b"global/pg_internal.init", None),
        (b"base/16384/pg_filenode.map", None),
        (b"base/16384/pg_internal.init", None),
        (b"base/16384/PG_VERSION", None),
        (b"base/16384/t3_16450", None),
        (b"base/16384/t3_16450.1", None),
        (b"base/pgsql_tmp/pgsql_tmp1234.0", None),
        (b"pg_tblspc/16400/PG_15_202209061/pgsql_tmp/pgsql_tmp1234.0", None),
        (b"pg_wal/000000010000000000000001", None),
        (b"pg_xact/0000", None),
        (b"base/16384/16385_foo", None),
        (b"base/16384/16385.", None),
        (b"16385", None),
        (b"pg_tblspc/16400/16385", None),
    ],
)
def test_relation_file_info(relpath: bytes, info: tuple[int, int] | None) -> None:
    assert relation_file_info(relpath) == info
