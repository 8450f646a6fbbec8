"""Throughput of PostgreSQL page-checksum verification (medvault.sources.postgres.checksums).

A physical backup verifies every page it reads, on the reading thread, so verification must
stay well above the ~300-500 MB/s a backup reads at. This builds heap-like pages (header, line
pointers, tuples of text and numbers, pd_lsn before the backup start so every page is judged)
with valid checksums, then feeds them to PageVerifier the way the chunker does: 16 MiB pieces
from a buffer at an odd byte offset. Prints the median of several runs in MB/s.

    .venv/bin/python bench/pg_checksums_bench.py [--mib 512] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import struct
import time

import numpy as np

from medvault.sources.postgres.checksums import BLCKSZ, PageVerifier, pg_checksum_pages

MiB = 1024 * 1024
START_LSN = 0x2_0000_0000  # after every generated page's pd_lsn
WORDS = ["patient", "dose", "mg", "ward", "note", "stable", "review", "lab", "ok", "pending"]


def heap_page(rng: random.Random) -> bytes:
    page = bytearray(BLCKSZ)
    upper, pointers = BLCKSZ, list[int]()
    while True:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))).encode()
        tuple_ = struct.pack("<IIIHHHBB", rng.randint(3, 10**6), 0, 0, 0, 3, 0x0902, 24, 0)
        tuple_ += struct.pack("<iq", rng.randint(0, 10**6), rng.randint(0, 10**12)) + text
        size = (len(tuple_) + 7) & ~7
        if upper - size < 24 + 4 * (len(pointers) + 1):
            break
        upper -= size
        page[upper : upper + len(tuple_)] = tuple_
        pointers.append(upper | (1 << 15) | (len(tuple_) << 17))  # lp_off, LP_NORMAL, lp_len
    lsn = rng.randint(0x100_0000, START_LSN - 1)
    lower = 24 + 4 * len(pointers)
    page[:24] = struct.pack("<IIHHHHHHI", lsn >> 32, lsn & 0xFFFFFFFF, 0, 0, lower, upper,
                            BLCKSZ, BLCKSZ | 4, 0)  # fmt: skip
    page[24:lower] = struct.pack(f"<{len(pointers)}I", *pointers)
    return bytes(page)


def make_relation(mib: int, distinct: int = 2048) -> bytes:
    """mib MiB of pages (distinct ones repeated), each with a valid checksum for its block."""
    rng = random.Random(42)
    base = np.frombuffer(b"".join(heap_page(rng) for _ in range(distinct)), dtype=np.uint8)
    count = mib * MiB // BLCKSZ
    pages = np.resize(base, count * BLCKSZ).reshape(count, BLCKSZ)
    pages.view(np.uint16)[:, 4] = pg_checksum_pages(pages, np.arange(count))
    return pages.tobytes()


def run(data: memoryview, piece: int) -> tuple[float, int]:
    verifier = PageVerifier(0, START_LSN)
    started = time.perf_counter()
    for offset in range(0, len(data), piece):
        verifier.feed(data[offset : offset + piece], offset)
    verifier.finish()
    elapsed = time.perf_counter() - started
    assert verifier.bad_blocks == [], verifier.bad_blocks[:10]
    return elapsed, verifier.pages_seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    relation = make_relation(args.mib)
    # Like the chunker's reused read buffer: pieces rarely start 4-byte aligned.
    buffer = bytearray(len(relation) + 3)
    buffer[3:] = relation
    data = memoryview(buffer)[3:]
    for label, piece in (("16 MiB pieces", 16 * MiB), ("1 MiB pieces", MiB)):
        times = []
        for _ in range(args.runs):
            elapsed, pages = run(data, piece)
            assert pages == len(relation) // BLCKSZ
            times.append(elapsed)
        rate = len(relation) / statistics.median(times) / 1e6
        print(f"{label}: {rate:,.0f} MB/s (median of {args.runs} over {args.mib} MiB)")


if __name__ == "__main__":
    main()
