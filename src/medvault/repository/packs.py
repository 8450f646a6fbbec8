"""Packs: many sealed blobs in one object, with an encrypted header at the end so the index
can be rebuilt from packs alone. Layout in docs/format.md, "Packs"."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medvault.errors import IntegrityError
from medvault.repository.crypto import (
    HEADER_NONCE,
    KEY_BLOCK_LEN,
    DataKey,
    blob_nonce,
    unwrap_content_key,
    wrap_content_key,
)

PACK_MAGIC = b"MVP1"
HEADER_AAD = b"medvault pack header"
TRAILER = struct.Struct("<I4s")
ENTRY = struct.Struct("<32sBIIII")  # id, type, ordinal, offset, length, raw length

DATA_BLOB = 0
TREE_BLOB = 1


@dataclass(frozen=True)
class PackEntry:
    blob_id: bytes
    blob_type: int
    ordinal: int
    offset: int
    length: int
    raw_length: int

    def pack(self) -> bytes:
        return ENTRY.pack(
            self.blob_id, self.blob_type, self.ordinal, self.offset, self.length, self.raw_length
        )


def pack_entries(entries: list[PackEntry]) -> bytes:
    return b"".join(e.pack() for e in entries)


def unpack_entries(raw: bytes) -> list[PackEntry]:
    if len(raw) % ENTRY.size:
        raise IntegrityError("blob table has a partial entry")
    return [PackEntry(*fields) for fields in ENTRY.iter_unpack(raw)]


def blob_aad(blob_id: bytes, blob_type: int) -> bytes:
    return blob_id + bytes([blob_type])


class PackBuilder:
    """Accumulates sealed blobs under one fresh content key. Not thread-safe: one writer."""

    def __init__(self, kek: DataKey) -> None:
        self._content_key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(self._content_key)
        self.key_block = wrap_content_key(kek, self._content_key)
        self.entries: list[PackEntry] = []
        self._parts: list[bytes] = []
        self.size = 0

    def add(self, blob_id: bytes, blob_type: int, payload: bytes, raw_length: int) -> PackEntry:
        ordinal = len(self.entries)
        sealed = self._aead.encrypt(blob_nonce(ordinal), payload, blob_aad(blob_id, blob_type))
        entry = PackEntry(blob_id, blob_type, ordinal, self.size, len(sealed), raw_length)
        self.entries.append(entry)
        self._parts.append(sealed)
        self.size += len(sealed)
        return entry

    def open_added(self, entry: PackEntry) -> bytes:
        """Decrypt a blob just added: part of the decode-before-write check."""
        return self._aead.decrypt(
            blob_nonce(entry.ordinal),
            self._parts[entry.ordinal],
            blob_aad(entry.blob_id, entry.blob_type),
        )

    def finish(self) -> bytes:
        header = self._aead.encrypt(HEADER_NONCE, pack_entries(self.entries), HEADER_AAD)
        self._parts.extend([header, self.key_block, TRAILER.pack(len(header), PACK_MAGIC)])
        data = b"".join(self._parts)
        self._parts = []
        return data


def open_blob(content_key: bytes, entry: PackEntry, sealed: bytes) -> bytes:
    try:
        return AESGCM(content_key).decrypt(
            blob_nonce(entry.ordinal), sealed, blob_aad(entry.blob_id, entry.blob_type)
        )
    except InvalidTag as exc:
        raise IntegrityError(f"blob {entry.blob_id.hex()[:16]} failed authentication") from exc


def read_pack_header(keks: dict[bytes, DataKey], data: bytes) -> tuple[bytes, list[PackEntry]]:
    """The key block and the blob table of a whole pack."""
    if len(data) < TRAILER.size + KEY_BLOCK_LEN:
        raise IntegrityError("pack is truncated")
    header_len, magic = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    if magic != PACK_MAGIC:
        raise IntegrityError("pack trailer is damaged")
    key_end = len(data) - TRAILER.size
    key_block = data[key_end - KEY_BLOCK_LEN : key_end]
    header_start = key_end - KEY_BLOCK_LEN - header_len
    if header_start < 0:
        raise IntegrityError("pack header length is out of range")
    content_key = unwrap_content_key(keks, key_block)
    try:
        table = AESGCM(content_key).decrypt(
            HEADER_NONCE, data[header_start : header_start + header_len], HEADER_AAD
        )
    except InvalidTag as exc:
        raise IntegrityError("pack header failed authentication") from exc
    return key_block, unpack_entries(table)
