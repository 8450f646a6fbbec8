"""The in-memory blob index answers a lookup in time independent of its size."""

from __future__ import annotations

import os
import tracemalloc

from medvault.repository.index import MasterIndex, PackRecord
from medvault.repository.packs import PackEntry

ROWS = 1_000_000
BLOBS_PER_PACK = 1000


def large_index() -> tuple[MasterIndex, list[bytes]]:
    index = MasterIndex()
    ids = [os.urandom(32) for _ in range(ROWS)]
    for first in range(0, ROWS, BLOBS_PER_PACK):
        entries = [
            PackEntry(ids[first + i], 0, i, i * 100, 100, 100) for i in range(BLOBS_PER_PACK)
        ]
        index.add_pack(PackRecord(os.urandom(32).hex(), b"k" * 81, entries))
    index.merge()
    return index, ids


def test_lookup_allocates_nothing_in_proportion_to_the_index() -> None:
    """A lookup that converts the prefix array (8 MB at a million rows) costs time in
    proportion to the index too: a nightly backup of a large archive would spend hours."""
    index, ids = large_index()
    absent = [os.urandom(32) for _ in range(100)]
    tracemalloc.start()
    try:
        for blob_id in ids[:100] + absent:
            index.lookup(blob_id)
            _ = blob_id in index
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"lookups allocated {peak} bytes at peak"
    assert all(index.lookup(blob_id) is not None for blob_id in ids[:: ROWS // 1000])
    assert all(index.lookup(blob_id) is None for blob_id in absent)
