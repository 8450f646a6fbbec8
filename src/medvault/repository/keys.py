"""The master key and the key slots that wrap it.

The master key is random. Slots wrap it under a passphrase (Argon2id) or a key file; any slot
opens the repository, and changing a passphrase rewrites only its slot.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medvault.errors import (
    IntegrityError,
    MedvaultError,
    SlotUnusable,
    UnsupportedFormat,
    UsageError,
    WrongPassphrase,
)
from medvault.repository.crypto import KEY_ID_LEN, DataKey

KEYFILE_HEADER = "medvault-keyfile-v1"
# OWASP's first Argon2id recommendation is 19 MiB x 2; a backup key guards years of patient
# records and is derived once per command, so take 64 MiB x 3 (~0.2 s here).
DEFAULT_KDF = {"memory_kib": 65536, "iterations": 3, "lanes": 4}
SALT_BYTES = 16


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
        """A master key as a slot unwraps it. The slot's AEAD proves only that someone who
        held a key wrote it, so every field is checked before anything uses it."""
        try:
            doc = msgpack.unpackb(raw)
        except (ValueError, msgpack.UnpackException, UnicodeDecodeError) as exc:
            raise IntegrityError("master key is malformed") from exc
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise IntegrityError("master key has an unknown version")

        def key_bytes(value: object, length: int, what: str) -> bytes:
            if not isinstance(value, bytes) or len(value) != length:
                raise IntegrityError(f"master key has a malformed {what}")
            return value

        seed = doc.get("chunker_seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise IntegrityError("master key has a malformed chunker seed")
        entries = doc.get("data_keys")
        if not isinstance(entries, list) or not entries:
            raise IntegrityError("master key has no data keys")
        data_keys = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise IntegrityError("master key has a malformed data key")
            data_keys.append(
                DataKey(
                    key_bytes(entry.get("id"), KEY_ID_LEN, "data key id"),
                    key_bytes(entry.get("key"), 32, "data key"),
                )
            )
        current = key_bytes(doc.get("current"), KEY_ID_LEN, "current key id")
        if current not in {k.key_id for k in data_keys}:
            raise IntegrityError("master key names a current data key it does not hold")
        return cls(
            id_key=key_bytes(doc.get("id_key"), 32, "id key"),
            mac_key=key_bytes(doc.get("mac_key"), 32, "MAC key"),
            chunker_seed=seed,
            data_keys=tuple(data_keys),
            current_key_id=current,
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


# A key slot is read before anything can authenticate it: anyone who can write to the store
# (an append-only one too) can plant one. So every field is checked when it is read, and a
# slot may ask for at most ~4 GiB-passes of Argon2id (1 GiB x 4, 256 MiB x 16, 64 MiB x 64):
# 2-4 s here, against ~0.12 s for the 64 MiB x 3 medvault writes. Memory above 1 GiB would
# make a small backup host swap or meet the OOM killer before the wrong slot is even tried.
KDF_MAX_MEMORY_KIB = 1024 * 1024
KDF_MAX_WORK = 4 * 1024 * 1024  # memory_kib x iterations
KDF_MAX_LANES = 16
# All passphrase slots tried in one opening together get at most four maximal derivations
# (~10-17 s here). Cheaper slots are tried first, and among equals the ones the store has
# held longest, so slots planted later cannot push a real one out of the budget unless they
# are cheaper than it and many.
KDF_WORK_BUDGET = 4 * KDF_MAX_WORK
SALT_LENGTHS = range(16, 65)
NONCE_LENGTH = 12
# The wrapped master key: a MessagePack map of ~170 bytes plus ~55 per data-key epoch.
WRAPPED_MAX = 64 * 1024
SLOT_MAX_BYTES = 256 * 1024
_SLOT_ID = re.compile(r"^[0-9a-f]{32}$")
_KDF_FIELDS = {"algorithm", "salt", "memory_kib", "iterations", "lanes"}


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_kdf(kdf: object) -> dict[str, Any]:
    """The KDF parameters of a passphrase slot, checked; SlotUnusable when they are not
    ones medvault will run."""
    if not isinstance(kdf, dict):
        raise SlotUnusable("kdf is not an object")
    algorithm = kdf.get("algorithm")
    if algorithm != "argon2id":
        raise SlotUnusable(f"KDF {str(algorithm)[:40]!r} is not supported", unsupported=True)
    if set(kdf) != _KDF_FIELDS:
        raise SlotUnusable(f"kdf fields {sorted(kdf)} are not those of Argon2id")
    try:
        salt = _unb64(kdf["salt"]) if isinstance(kdf["salt"], str) else None
    except ValueError:
        salt = None
    if salt is None:
        raise SlotUnusable("kdf salt is not base64")
    if len(salt) not in SALT_LENGTHS:
        raise SlotUnusable(f"kdf salt is {len(salt)} bytes (16 to 64 allowed)")
    memory, iterations, lanes = kdf["memory_kib"], kdf["iterations"], kdf["lanes"]
    if not (_whole(memory) and _whole(iterations) and _whole(lanes)):
        raise SlotUnusable("kdf memory_kib, iterations and lanes must be integers")
    if not 1 <= lanes <= KDF_MAX_LANES:
        raise SlotUnusable(f"kdf asks for {lanes} lanes (1 to {KDF_MAX_LANES} allowed)")
    if not 8 * lanes <= memory <= KDF_MAX_MEMORY_KIB:
        raise SlotUnusable(
            f"kdf asks for {memory} KiB of memory ({8 * lanes} to {KDF_MAX_MEMORY_KIB} allowed)"
        )
    if iterations < 1 or memory * iterations > KDF_MAX_WORK:
        raise SlotUnusable(
            f"kdf asks for {iterations} iterations over {memory} KiB (at most "
            f"{KDF_MAX_WORK} KiB-passes allowed)"
        )
    return {
        "algorithm": algorithm,
        "salt": kdf["salt"],
        "memory_kib": memory,
        "iterations": iterations,
        "lanes": lanes,
    }


def kdf_work(kdf: dict[str, Any]) -> int:
    """What one derivation costs, in KiB-passes (0 for slots without a KDF)."""
    if not kdf:
        return 0
    return int(kdf["memory_kib"]) * int(kdf["iterations"])


def _derive(passphrase: bytes, kdf: dict[str, Any]) -> bytes:
    kdf = check_kdf(kdf)  # again here: no derivation ever runs on unchecked parameters
    # Imported here: opening with a key file (wal-push) never pays for it.
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    return Argon2id(
        salt=_unb64(kdf["salt"]),
        length=32,
        iterations=kdf["iterations"],
        lanes=kdf["lanes"],
        memory_cost=kdf["memory_kib"],
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
    problem: str = ""  # why this slot cannot open anything; empty when it can
    unsupported: bool = False  # the problem is a version or algorithm this medvault lacks

    @classmethod
    def create(cls, master: MasterKey, credential: Credential, label: str = "") -> KeySlot:
        slot_id = secrets.token_hex(16)
        kdf: dict[str, Any] = {}
        keyfile_id = ""
        if credential.passphrase is not None:
            kind = "passphrase"
            kdf = {"algorithm": "argon2id", "salt": _b64(os.urandom(SALT_BYTES)), **DEFAULT_KDF}
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

    @property
    def usable(self) -> bool:
        return not self.problem

    def describe_problem(self) -> str:
        what = "unsupported" if self.unsupported else "damaged"
        return f"{what}: {self.problem}"

    def open(self, credential: Credential) -> MasterKey | None:
        """The master key, or None when this credential does not fit this slot."""
        if not self.usable:
            return None
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
        """The slot stored as keys/<slot_id>, every field checked; SlotUnusable otherwise."""
        if not _SLOT_ID.match(slot_id):
            raise SlotUnusable("its name is not a key slot id (32 hex digits)")
        if len(raw) > SLOT_MAX_BYTES:
            raise SlotUnusable(f"it is {len(raw)} bytes long (a slot is under 1 KiB)")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise SlotUnusable("it is not JSON") from None
        if not isinstance(doc, dict):
            raise SlotUnusable("it is not a JSON object")
        version = doc.get("version")
        if isinstance(version, int) and _whole(version) and version > 1:
            raise SlotUnusable(f"version {version} (a newer medvault wrote it)", unsupported=True)
        if version != 1 or not _whole(version):
            raise SlotUnusable(f"version {str(version)[:20]!r} is not a slot version")
        kind = doc.get("kind")
        if kind not in ("passphrase", "keyfile"):
            raise SlotUnusable(f"kind {str(kind)[:40]!r} is not supported", unsupported=True)
        texts = {key: doc.get(key, "") for key in ("created", "host", "user", "label")}
        if not all(isinstance(value, str) for value in texts.values()) or not texts["created"]:
            raise SlotUnusable("created, host, user and label must be text")
        nonce = _field_bytes(doc, "nonce")
        if len(nonce) != NONCE_LENGTH:
            raise SlotUnusable(f"nonce is {len(nonce)} bytes, not {NONCE_LENGTH}")
        wrapped = _field_bytes(doc, "wrapped")
        if not 16 < len(wrapped) <= WRAPPED_MAX + 16:
            raise SlotUnusable(f"wrapped key is {len(wrapped)} bytes")
        kdf: dict[str, Any] = {}
        keyfile_id = doc.get("keyfile_id", "")
        if kind == "passphrase":
            if "kdf" not in doc:
                raise SlotUnusable("a passphrase slot without kdf")
            kdf = check_kdf(doc["kdf"])
            if keyfile_id:
                raise SlotUnusable("a passphrase slot with a keyfile_id")
        else:
            if doc.get("kdf"):
                raise SlotUnusable("a key-file slot with a kdf")
            if not isinstance(keyfile_id, str) or not _SLOT_ID.match(keyfile_id):
                raise SlotUnusable("keyfile_id is not 32 hex digits")
        return cls(
            slot_id=slot_id,
            kind=kind,
            created=texts["created"],
            host=texts["host"],
            user=texts["user"],
            label=texts["label"],
            nonce=nonce,
            wrapped=wrapped,
            kdf=kdf,
            keyfile_id=keyfile_id,
        )

    @classmethod
    def unusable(cls, slot_id: str, raw: bytes, problem: SlotUnusable) -> KeySlot:
        """A slot that cannot open anything, kept so that `key list` can show it and `key
        remove` remove it; what it says of itself is shown where it is text."""
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            doc = {}

        def text(key: str) -> str:
            value = doc.get(key)
            return value[:80] if isinstance(value, str) else ""

        return cls(
            slot_id=slot_id,
            kind=text("kind") or "?",
            created=text("created"),
            host=text("host"),
            user=text("user"),
            label=text("label"),
            nonce=b"",
            wrapped=b"",
            problem=str(problem),
            unsupported=problem.unsupported,
        )


def _field_bytes(doc: dict[str, Any], key: str) -> bytes:
    value = doc.get(key)
    try:
        if isinstance(value, str):
            return _unb64(value)
    except ValueError:
        pass
    raise SlotUnusable(f"{key} is not base64")


def unusable_warning(slot: KeySlot) -> str:
    return (
        f"key slot {slot.slot_id} is unusable ({slot.describe_problem()}) and was skipped; "
        "if nobody here wrote it, someone with write access to the store did: remove it with "
        "`medvault key remove`"
    )


def _no_usable_slot(slots: list[KeySlot]) -> MedvaultError:
    shown = ", ".join(f"keys/{s.slot_id} ({s.describe_problem()})" for s in slots[:3])
    more = f" and {len(slots) - 3} more" if len(slots) > 3 else ""
    message = f"no usable key slot: {shown}{more}; restore keys/ from a copy of the repository"
    if all(s.unsupported for s in slots):
        return UnsupportedFormat(f"{message}, or upgrade medvault")
    return IntegrityError(message)


def open_master_key(slots: list[KeySlot], credential: Credential) -> tuple[MasterKey, KeySlot]:
    """The master key from the first slot that opens with `credential`. Unusable slots are
    skipped. Key-file slots come first: they cost nothing to try. Passphrase slots follow,
    cheapest first (ties in the order given: the order the store has held them), within
    KDF_WORK_BUDGET in all."""
    usable = [s for s in slots if s.usable]
    if not usable:
        raise _no_usable_slot(slots)
    budget = KDF_WORK_BUDGET
    untried = 0
    for slot in sorted(usable, key=lambda s: (s.kind != "keyfile", kdf_work(s.kdf))):
        if slot.kind == "passphrase" and credential.passphrase is not None:
            if kdf_work(slot.kdf) > budget:
                untried += 1
                continue
            budget -= kdf_work(slot.kdf)
        master = slot.open(credential)
        if master is not None:
            return master, slot
    what = "key file" if credential.passphrase is None else "passphrase"
    message = f"wrong {what}: no key slot of this repository opens with it"
    if untried:
        message += (
            f"; {untried} passphrase slot(s) were not tried, as together the slots ask for "
            "more key-derivation work than one opening may spend: see `medvault key list` "
            "and remove the slots nobody here made"
        )
    unusable = [s for s in slots if not s.usable]
    if unusable:
        message += (
            f"; {len(unusable)} unusable slot(s) skipped (keys/{unusable[0].slot_id}: "
            f"{unusable[0].describe_problem()}): if the {what} belongs to one, restore keys/ "
            "from a copy of the repository"
        )
    raise WrongPassphrase(message)
