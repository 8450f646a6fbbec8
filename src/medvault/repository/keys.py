"""The master key and the key slots that wrap it.

The master key is random. Slots wrap it under a passphrase (Argon2id) or a key file; any slot
opens the repository, and changing a passphrase rewrites only its slot.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medvault.errors import IntegrityError, UsageError, WrongPassphrase
from medvault.repository.crypto import DataKey

KEYFILE_HEADER = "medvault-keyfile-v1"
# OWASP's first Argon2id recommendation is 19 MiB x 2; a backup key guards years of patient
# records and is derived once per command, so take 64 MiB x 3 (~0.2 s here).
DEFAULT_KDF = {"memory_kib": 65536, "iterations": 3, "lanes": 4}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class MasterKey:
    # repr=False: a key must never reach a log line or a traceback (DataKey hides its own).
    id_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)
    chunker_seed: int = field(repr=False)  # chunk boundaries would fingerprint files
    data_keys: tuple[DataKey, ...]
    current_key_id: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        data_key = DataKey.generate()
        return cls(
            id_key=os.urandom(32),
            mac_key=os.urandom(32),
            chunker_seed=secrets.randbits(63) | 1,
            data_keys=(data_key,),
            current_key_id=data_key.key_id,
        )

    @property
    def keks(self) -> dict[bytes, DataKey]:
        return {k.key_id: k for k in self.data_keys}

    @property
    def current(self) -> DataKey:
        return self.keks[self.current_key_id]

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self.id_key, max_threads=1).digest()

    def mac(self, data: bytes) -> str:
        return blake3.blake3(data, key=self.mac_key, max_threads=1).hexdigest()

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            {
                "v": 1,
                "id_key": self.id_key,
                "mac_key": self.mac_key,
                "chunker_seed": self.chunker_seed,
                "data_keys": [{"id": k.key_id, "key": k.key} for k in self.data_keys],
                "current": self.current_key_id,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> MasterKey:
        doc = msgpack.unpackb(raw)
        if doc.get("v") != 1:
            raise IntegrityError("master key has an unknown version")
        return cls(
            id_key=doc["id_key"],
            mac_key=doc["mac_key"],
            chunker_seed=doc["chunker_seed"],
            data_keys=tuple(DataKey(k["id"], k["key"]) for k in doc["data_keys"]),
            current_key_id=doc["current"],
        )


@dataclass(frozen=True)
class Credential:
    """What the user offers to open a repository: a passphrase or a key file's secret."""

    passphrase: bytes | None = None
    keyfile_secret: bytes | None = None
    origin: str = ""

    def __repr__(self) -> str:  # never let a secret reach a log line or traceback
        return f"Credential(origin={self.origin!r})"


def read_keyfile(path: str | os.PathLike[str]) -> bytes:
    try:
        lines = Path(path).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read key file {path}: {exc}") from exc
    if len(lines) != 2 or lines[0] != KEYFILE_HEADER:
        raise UsageError(f"{path} is not a medvault key file")
    try:
        secret = _unb64(lines[1])
    except ValueError as exc:
        raise UsageError(f"{path} is not a medvault key file") from exc
    if len(secret) != 32:
        raise UsageError(f"{path} is not a medvault key file")
    return secret


def write_keyfile(path: str | os.PathLike[str]) -> bytes:
    secret = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(f"{KEYFILE_HEADER}\n{_b64(secret)}\n")
        handle.flush()
        os.fsync(handle.fileno())
    return secret


# A key slot is read before anything can authenticate it: cap what it may ask for, so that a
# planted slot cannot make opening the repository allocate tens of gigabytes.
KDF_LIMITS = {"memory_kib": 4 * 1024 * 1024, "iterations": 64, "lanes": 64}


def _derive(passphrase: bytes, kdf: dict[str, Any]) -> bytes:
    if kdf.get("algorithm") != "argon2id":
        raise IntegrityError(f"key slot uses unknown KDF {kdf.get('algorithm')!r}")
    for name, limit in KDF_LIMITS.items():
        if not 1 <= int(kdf.get(name, 0)) <= limit:
            raise IntegrityError(f"key slot asks for Argon2id {name}={kdf.get(name)!r}")
    # Imported here: opening with a key file (wal-push) never pays for it.
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    return Argon2id(
        salt=_unb64(kdf["salt"]),
        length=32,
        iterations=int(kdf["iterations"]),
        lanes=int(kdf["lanes"]),
        memory_cost=int(kdf["memory_kib"]),
    ).derive(passphrase)


def _keyfile_id(secret: bytes) -> str:
    return blake3.blake3(secret, derive_key_context="medvault 2026 keyfile id").hexdigest(16)


@dataclass
class KeySlot:
    slot_id: str
    kind: str  # "passphrase" | "keyfile"
    created: str
    host: str
    user: str
    label: str
    nonce: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)  # the master key, encrypted: no need to print it
    kdf: dict[str, Any] = field(default_factory=dict)
    keyfile_id: str = ""

    @classmethod
    def create(cls, master: MasterKey, credential: Credential, label: str = "") -> KeySlot:
        slot_id = secrets.token_hex(16)
        kdf: dict[str, Any] = {}
        keyfile_id = ""
        if credential.passphrase is not None:
            kind = "passphrase"
            kdf = {"algorithm": "argon2id", "salt": _b64(os.urandom(16)), **DEFAULT_KDF}
            kek = _derive(credential.passphrase, kdf)
        elif credential.keyfile_secret is not None:
            kind = "keyfile"
            kek = credential.keyfile_secret
            keyfile_id = _keyfile_id(kek)
        else:
            raise UsageError("a new key slot needs a passphrase or a key file")
        import getpass
        import socket

        nonce = os.urandom(12)
        wrapped = AESGCM(kek).encrypt(nonce, master.to_bytes(), slot_id.encode())
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return cls(
            slot_id,
            kind,
            now_iso(),
            socket.gethostname(),
            user,
            label,
            nonce,
            wrapped,
            kdf,
            keyfile_id,
        )

    def open(self, credential: Credential) -> MasterKey | None:
        """The master key, or None when this credential does not fit this slot."""
        if self.kind == "passphrase" and credential.passphrase is not None:
            kek = _derive(credential.passphrase, self.kdf)
        elif self.kind == "keyfile" and credential.keyfile_secret is not None:
            if _keyfile_id(credential.keyfile_secret) != self.keyfile_id:
                return None
            kek = credential.keyfile_secret
        else:
            return None
        try:
            raw = AESGCM(kek).decrypt(self.nonce, self.wrapped, self.slot_id.encode())
        except InvalidTag:
            return None
        return MasterKey.from_bytes(raw)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "version": 1,
            "kind": self.kind,
            "created": self.created,
            "host": self.host,
            "user": self.user,
            "label": self.label,
            "nonce": _b64(self.nonce),
            "wrapped": _b64(self.wrapped),
        }
        if self.kdf:
            doc["kdf"] = self.kdf
        if self.keyfile_id:
            doc["keyfile_id"] = self.keyfile_id
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, slot_id: str, raw: bytes) -> KeySlot:
        try:
            doc = json.loads(raw)
            if doc["version"] != 1:
                raise IntegrityError(f"key slot {slot_id} has unknown version {doc['version']}")
            return cls(
                slot_id=slot_id,
                kind=doc["kind"],
                created=doc["created"],
                host=doc.get("host", ""),
                user=doc.get("user", ""),
                label=doc.get("label", ""),
                nonce=_unb64(doc["nonce"]),
                wrapped=_unb64(doc["wrapped"]),
                kdf=doc.get("kdf", {}),
                keyfile_id=doc.get("keyfile_id", ""),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"key slot {slot_id} is damaged") from exc


def open_master_key(slots: list[KeySlot], credential: Credential) -> tuple[MasterKey, KeySlot]:
    # Key-file slots first: they cost nothing to try, unlike an Argon2id derivation.
    for slot in sorted(slots, key=lambda s: s.kind != "keyfile"):
        master = slot.open(credential)
        if master is not None:
            return master, slot
    what = "key file" if credential.passphrase is None else "passphrase"
    raise WrongPassphrase(f"wrong {what}: no key slot of this repository opens with it")
