"""Envelope encryption: every pack and metadata object has its own random content key,
wrapped under a key-encryption key (KEK) named by id. See docs/format.md, "Key blocks"."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medvault.errors import IntegrityError

KEY_BLOCK_MAGIC = b"MVK\x01"
ALG_AES256GCM = 1
# How a repository protects data at rest, in an auditor's words (audit records).
ENCRYPTION = "AES-256-GCM (per-object keys wrapped by the master key; Argon2id key slots)"
KEY_ID_LEN = 16
KEY_BLOCK_LEN = 4 + 1 + KEY_ID_LEN + 12 + 32 + 16  # 81
HEADER_NONCE = b"\xff" * 12
OBJECT_NONCE = b"\x00" * 12


def blob_nonce(ordinal: int) -> bytes:
    """Blob i of a pack is sealed with nonce i; the pack header uses all-ones."""
    return ordinal.to_bytes(12, "big")


def storage_id(data: bytes) -> str:
    """Unkeyed BLAKE3 of stored bytes: lets anyone detect storage damage without a key."""
    return blake3.blake3(data, max_threads=1).hexdigest()


@dataclass(frozen=True)
class DataKey:
    key_id: bytes
    key: bytes = field(repr=False)  # never in a log line or a traceback

    @classmethod
    def generate(cls) -> DataKey:
        return cls(os.urandom(KEY_ID_LEN), AESGCM.generate_key(bit_length=256))


def wrap_content_key(kek: DataKey, content_key: bytes) -> bytes:
    head = KEY_BLOCK_MAGIC + bytes([ALG_AES256GCM]) + kek.key_id
    nonce = os.urandom(12)
    return head + nonce + AESGCM(kek.key).encrypt(nonce, content_key, head)


def key_block_kek_id(block: bytes) -> bytes:
    if len(block) != KEY_BLOCK_LEN or block[:4] != KEY_BLOCK_MAGIC:
        raise IntegrityError("damaged key block")
    if block[4] != ALG_AES256GCM:
        raise IntegrityError(f"unknown key-block algorithm {block[4]}")
    return block[5 : 5 + KEY_ID_LEN]


def unwrap_content_key(keks: dict[bytes, DataKey], block: bytes) -> bytes:
    kek_id = key_block_kek_id(block)
    kek = keks.get(kek_id)
    if kek is None:
        raise IntegrityError(f"object sealed under unknown key {kek_id.hex()}")
    head, nonce, wrapped = block[:21], block[21:33], block[33:]
    try:
        return AESGCM(kek.key).decrypt(nonce, wrapped, head)
    except InvalidTag as exc:
        raise IntegrityError("key block failed authentication") from exc


def record_aad(kind: bytes, name: str) -> bytes:
    """The associated data of a sealed object stored under a name it does not derive from its
    bytes (a hold, a drill result, a WAL file): its kind and that name, so that a copy under
    another name fails to open instead of being replayed there."""
    return kind + b"\x00" + name.encode("ascii")


def seal_object(kek: DataKey, payload: bytes, kind: bytes) -> bytes:
    """A metadata object: key block, then the payload sealed with nonce zero (the key is
    fresh for this object). `kind` is bound as associated data so objects cannot be swapped
    between roles (an index presented as a snapshot fails); for named records it is
    `record_aad(kind, name)`."""
    content_key = AESGCM.generate_key(bit_length=256)
    return wrap_content_key(kek, content_key) + AESGCM(content_key).encrypt(
        OBJECT_NONCE, payload, kind
    )


def open_object(keks: dict[bytes, DataKey], data: bytes, kind: bytes) -> bytes:
    if len(data) < KEY_BLOCK_LEN + 16:
        raise IntegrityError("object is truncated")
    content_key = unwrap_content_key(keks, data[:KEY_BLOCK_LEN])
    try:
        return AESGCM(content_key).decrypt(OBJECT_NONCE, data[KEY_BLOCK_LEN:], kind)
    except InvalidTag as exc:
        raise IntegrityError("object failed authentication") from exc
