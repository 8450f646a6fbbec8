"""The blob index: blob id -> where the sealed blob lives.

Held in memory as sorted NumPy arrays (~60 bytes a blob, against ~115 for the id alone in a
Python set) so ten million chunks fit in well under a gigabyte; blobs added during this run
sit in a small dict until the next merge.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgpack

from medvault.errors import IntegrityError
from medvault.repository.crypto import KEY_BLOCK_LEN
from medvault.repository.packs import ENTRY, PackEntry

if TYPE_CHECKING:
    import numpy as np

TABLE_FIELDS = [
    ("id", "u1", (32,)),
    ("type", "u1"),
    ("ordinal", "<u4"),
    ("offset", "<u4"),
    ("length", "<u4"),
    ("raw", "<u4"),
]
MERGE_AT = 65536
PACK_ID_LEN = 32


@dataclass(frozen=True)
class PackRecord:
    pack_id: str
    key_block: bytes
    entries: list[PackEntry]


@dataclass(frozen=True)
class BlobLocation:
    pack_id: str
    key_block: bytes
    entry: PackEntry


def encode_index(packs: Iterable[PackRecord], supersedes: Iterable[str] = ()) -> bytes:
    return msgpack.packb(
        {
            "v": 1,
            "packs": [
                {
                    "id": bytes.fromhex(p.pack_id),
                    "key": p.key_block,
                    "blobs": b"".join(e.pack() for e in p.entries),
                }
                for p in packs
            ],
            "supersedes": list(supersedes),
        }
    )


def decode_index(payload: bytes) -> tuple[list[tuple[str, bytes, bytes]], list[str]]:
    """(pack id, key block, raw entry table) triples and the ids of superseded indexes."""
    try:
        doc = msgpack.unpackb(payload)
    except (ValueError, msgpack.UnpackException) as exc:
        raise IntegrityError("index is malformed") from exc
    if not isinstance(doc, dict) or doc.get("v") != 1:
        version = doc.get("v") if isinstance(doc, dict) else None
        raise IntegrityError(f"index has unknown version {version!r}")
    packs, supersedes = doc.get("packs"), doc.get("supersedes", [])
    if not isinstance(packs, list) or not isinstance(supersedes, list):
        raise IntegrityError("index is malformed")
    if not all(isinstance(s, str) for s in supersedes):
        raise IntegrityError("index is malformed: a superseded index id is not text")
    return [_pack_of(p) for p in packs], supersedes


def _pack_of(doc: object) -> tuple[str, bytes, bytes]:
    """One pack of an index, every field checked: a blob read through it must find a pack
    name, a key block and whole entries."""
    if not isinstance(doc, dict):
        raise IntegrityError("index is malformed: a pack is not a map")
    pack_id, key_block, table = doc.get("id"), doc.get("key"), doc.get("blobs")
    if not isinstance(pack_id, bytes) or len(pack_id) != PACK_ID_LEN:
        raise IntegrityError("index is malformed: a pack id is not 32 bytes")
    if not isinstance(key_block, bytes) or len(key_block) != KEY_BLOCK_LEN:
        raise IntegrityError(f"index names pack {pack_id.hex()[:16]} with a damaged key block")
    if not isinstance(table, bytes) or len(table) % ENTRY.size:
        raise IntegrityError(f"index entry table for pack {pack_id.hex()[:16]} is truncated")
    return pack_id.hex(), key_block, table


class MasterIndex:
    def __init__(self) -> None:
        import numpy as np  # here, not at the top: commands that need no index start faster

        self._np = np
        self._table_dtype = np.dtype(TABLE_FIELDS)
        assert self._table_dtype.itemsize == ENTRY.size
        self._row_dtype = np.dtype([*TABLE_FIELDS, ("pack", "<u4")])
        self._pack_ids: list[str] = []
        self._key_blocks: list[bytes] = []
        self._pack_numbers: dict[str, int] = {}
        self._rows = np.zeros(0, dtype=self._row_dtype)
        self._prefixes = np.zeros(0, dtype=np.uint64)
        self._ids = self._rows["id"]
        self._staged: list[np.ndarray] = []
        self._recent: dict[bytes, tuple[int, PackEntry]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows) + sum(len(s) for s in self._staged) + len(self._recent)

    def _pack_number(self, pack_id: str, key_block: bytes) -> int:
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = self._pack_numbers[pack_id] = len(self._pack_ids)
            self._pack_ids.append(pack_id)
            self._key_blocks.append(key_block)
        return number

    def add_table(self, pack_id: str, key_block: bytes, table: bytes) -> None:
        np = self._np
        """Bulk load from an index object; call `merge()` once all are added."""
        if len(table) % ENTRY.size:
            raise IntegrityError(f"index entry table for pack {pack_id[:16]} is truncated")
        with self._lock:
            number = self._pack_number(pack_id, key_block)
            parsed = np.frombuffer(table, dtype=self._table_dtype)
            rows = np.empty(len(parsed), dtype=self._row_dtype)
            for name in self._table_dtype.names or ():
                rows[name] = parsed[name]
            rows["pack"] = number
            self._staged.append(rows)

    def add_pack(self, record: PackRecord) -> None:
        with self._lock:
            number = self._pack_number(record.pack_id, record.key_block)
            for entry in record.entries:
                self._recent[entry.blob_id] = (number, entry)
            if len(self._recent) >= MERGE_AT:
                self._merge_locked()

    def merge(self) -> None:
        with self._lock:
            self._merge_locked()

    def _merge_locked(self) -> None:
        np = self._np
        parts = [self._rows, *self._staged]
        if self._recent:
            recent = np.empty(len(self._recent), dtype=self._row_dtype)
            for i, (number, e) in enumerate(self._recent.values()):
                recent[i] = (
                    np.frombuffer(e.blob_id, dtype="u1"),
                    e.blob_type,
                    e.ordinal,
                    e.offset,
                    e.length,
                    e.raw_length,
                    number,
                )
            parts.append(recent)
        if len(parts) == 1:
            return
        rows = np.concatenate(parts)
        prefixes = _prefixes(rows)
        order = np.argsort(prefixes, kind="stable")
        self._rows, self._prefixes = rows[order], prefixes[order]
        self._ids = self._rows["id"]
        self._staged, self._recent = [], {}

    def _row_of(self, blob_id: bytes) -> int | None:
        """The sorted-array row holding blob_id; call with the lock held."""
        if self._staged:
            self._merge_locked()
        prefix = int.from_bytes(blob_id[:8], "big")
        prefixes = self._prefixes
        # A NumPy uint64 scalar, not a Python int: NumPy compares an int below 2**63 with a
        # uint64 array by converting the whole array, which made every lookup O(n).
        row = int(prefixes.searchsorted(self._np.uint64(prefix)))
        while row < len(prefixes) and int(prefixes[row]) == prefix:
            if self._ids[row].tobytes() == blob_id:
                return row
            row += 1
        return None

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        with self._lock:
            hit = self._recent.get(blob_id)
            if hit is not None:
                number, entry = hit
                return BlobLocation(self._pack_ids[number], self._key_blocks[number], entry)
            row = self._row_of(blob_id)
            return None if row is None else self._location(self._rows[row])

    def drop_packs(self, pack_ids: set[str]) -> None:
        """Forget deleted packs, so that no lookup answers with a place that is gone."""
        np = self._np
        with self._lock:
            numbers = [self._pack_numbers[p] for p in pack_ids if p in self._pack_numbers]
            if not numbers:
                return
            self._merge_locked()
            keep = ~np.isin(self._rows["pack"], np.array(numbers, dtype=np.uint32))
            self._rows, self._prefixes = self._rows[keep], self._prefixes[keep]
            self._ids = self._rows["id"]

    def locations(self, blob_id: bytes) -> list[BlobLocation]:
        """Every place the blob is stored (a repack or two racing backups leave copies)."""
        with self._lock:
            found = []
            hit = self._recent.get(blob_id)
            if hit is not None:
                number, entry = hit
                found.append(BlobLocation(self._pack_ids[number], self._key_blocks[number], entry))
            row = self._row_of(blob_id)
            if row is None:
                return found
            prefix = self._prefixes[row]
            while row < len(self._prefixes) and self._prefixes[row] == prefix:
                if self._ids[row].tobytes() == blob_id:
                    found.append(self._location(self._rows[row]))
                row += 1
            return found

    def __contains__(self, blob_id: object) -> bool:
        """Membership without building a location: the incremental walk asks this for
        every blob of every unchanged file."""
        if not isinstance(blob_id, bytes):
            return False
        with self._lock:
            return blob_id in self._recent or self._row_of(blob_id) is not None

    def _location(self, row: np.void) -> BlobLocation:
        number = int(row["pack"])
        entry = PackEntry(
            row["id"].tobytes(),
            int(row["type"]),
            int(row["ordinal"]),
            int(row["offset"]),
            int(row["length"]),
            int(row["raw"]),
        )
        return BlobLocation(self._pack_ids[number], self._key_blocks[number], entry)

    def packs(self) -> Iterator[PackRecord]:
        np = self._np
        """Every indexed pack with its blobs in pack order."""
        self.merge()
        by_pack = np.argsort(self._rows["pack"], kind="stable")
        rows = self._rows[by_pack]
        bounds = np.searchsorted(rows["pack"], np.arange(len(self._pack_ids) + 1))
        for number, pack_id in enumerate(self._pack_ids):
            chunk = rows[bounds[number] : bounds[number + 1]]
            if not len(chunk):
                continue  # dropped
            entries = sorted((self._location(row).entry for row in chunk), key=lambda e: e.ordinal)
            yield PackRecord(pack_id, self._key_blocks[number], entries)


def _prefixes(rows: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.ascontiguousarray(rows["id"][:, :8]).view(">u8").ravel().astype(np.uint64)
