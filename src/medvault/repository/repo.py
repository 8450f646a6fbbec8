"""The Repository: opens keys, reads and writes blobs, indexes and snapshots.

Write order carries crash safety: packs, then the index naming them, then the snapshot
naming their blobs. Every object is written whole and durably before the next refers to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from typing import Any, TypeGuard

from medvault import __version__, faults
from medvault.backends import Backend
from medvault.errors import (
    BackendError,
    IntegrityError,
    MedvaultError,
    ObjectExists,
    ObjectLocked,
    ObjectNotFound,
    RepositoryExists,
    RepositoryLocked,
    RepositoryNotFound,
    SlotUnusable,
    SnapshotNotFound,
    UnsupportedFormat,
    UsageError,
)
from medvault.repository import compression
from medvault.repository.crypto import (
    open_object,
    record_aad,
    seal_object,
    storage_id,
    unwrap_content_key,
)
from medvault.repository.index import (
    BlobLocation,
    MasterIndex,
    PackRecord,
    decode_index,
    encode_index,
)
from medvault.repository.keys import (
    SLOT_MAX_BYTES,
    Credential,
    KeySlot,
    MasterKey,
    now_iso,
    open_master_key,
    unusable_warning,
)
from medvault.repository.locks import (
    LockInfo,
    LockTable,
    RepositoryLock,
    UnlockResult,
    read_locks,
    remove_stale_locks,
    store_time,
)
from medvault.repository.packs import open_blob
from medvault.repository.records import (
    AuditHead,
    Node,
    Snapshot,
    decode_snapshot,
    decode_tree,
    encode_snapshot,
)

FORMAT_VERSION = 1
METADATA_ZSTD_LEVEL = 3
KIND_INDEX = b"medvault index"
KIND_SNAPSHOT = b"medvault snapshot"
# Folders of named records (store_record): read and listed through list_records and
# load_record, never as raw objects by the layers above.
RECORD_FOLDERS = ("holds", "drills", "prune", "audit", "audit-keys")


@dataclass(frozen=True)
class ChunkerParams:
    algorithm: str = "fastcdc2020"
    min_size: int = 512 * 1024
    avg_size: int = 512 * 1024
    max_size: int = 8 * 1024 * 1024
    normalization: int = 1


@dataclass(frozen=True)
class RepoConfig:
    version: int
    repo_id: str
    created: str
    chunker: ChunkerParams
    compression_level: int
    pack_size: int

    def to_json(self, master: MasterKey) -> bytes:
        body = {
            "version": self.version,
            "id": self.repo_id,
            "created": self.created,
            "chunker": asdict(self.chunker),
            "compression": {"algorithm": "zstd", "level": self.compression_level},
            "pack_size": self.pack_size,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return json.dumps({**body, "mac": master.mac(canonical)}, indent=1).encode()

    @classmethod
    def parse(cls, raw: bytes, url: str) -> tuple[RepoConfig, dict[str, Any]]:
        """The config as stored, every field checked: it is read before any key can prove it
        genuine (and its MAC proves only that a key holder wrote it)."""
        damaged = f"repository config at {url} is damaged"
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(damaged) from exc
        version = doc.get("version") if isinstance(doc, dict) else None
        if not _is_int(version):
            raise IntegrityError(damaged)
        if version != FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository at {url} has format version {version}; this medvault "
                f"{__version__} reads version {FORMAT_VERSION}: upgrade medvault"
            )
        problem = _config_problem(doc)
        if problem:
            raise IntegrityError(f"{damaged}: {problem}")
        config = cls(
            version=version,
            repo_id=doc["id"],
            created=doc["created"],
            chunker=ChunkerParams(**doc["chunker"]),
            compression_level=doc["compression"]["level"],
            pack_size=doc["pack_size"],
        )
        return config, doc

    def verify(self, doc: dict[str, Any], master: MasterKey) -> None:
        body = {k: v for k, v in doc.items() if k != "mac"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        mac = doc.get("mac")
        if not isinstance(mac, str) or not mac.isascii():
            mac = ""  # compare_digest takes ASCII text only; a non-ASCII MAC is wrong anyway
        if not hmac.compare_digest(mac, master.mac(canonical)):
            raise IntegrityError("repository config has been altered (MAC mismatch)")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# What the chunker (pyfastcdc's bounds), zstd and the pack format (u32 offsets) accept.
_CHUNKER_RANGES = {
    "min_size": (64, 1 << 20),
    "avg_size": (256, 4 << 20),
    "max_size": (1024, 16 << 20),
    "normalization": (0, 3),
}
_ZSTD_LEVELS = (-(1 << 17), 22)
_PACK_SIZES = (1, 1 << 31)


def _config_problem(doc: dict[str, Any]) -> str | None:
    """What is wrong with a config's fields, or None."""
    repo_id, chunker, compression = doc.get("id"), doc.get("chunker"), doc.get("compression")
    if not isinstance(repo_id, str) or not re.fullmatch("[0-9a-f]{32}", repo_id):
        return "its id is not 32 hex digits"
    if not isinstance(doc.get("created"), str):
        return "no creation time"
    if not isinstance(chunker, dict) or set(chunker) != {f.name for f in fields(ChunkerParams)}:
        return "chunker parameters are missing or unknown"
    if not isinstance(chunker["algorithm"], str):
        return "chunker algorithm is not a name"
    for name, (low, high) in _CHUNKER_RANGES.items():
        if not _is_int(chunker[name]) or not low <= chunker[name] <= high:
            return f"chunker {name} {chunker[name]!r} is out of range"
    if not chunker["min_size"] <= chunker["avg_size"] <= chunker["max_size"]:
        return "chunker sizes are not in order"
    level = compression.get("level") if isinstance(compression, dict) else None
    if not _is_int(level) or not _ZSTD_LEVELS[0] <= level <= _ZSTD_LEVELS[1]:
        return f"compression level {level!r} is out of range"
    pack_size = doc.get("pack_size")
    if not _is_int(pack_size) or not _PACK_SIZES[0] <= pack_size <= _PACK_SIZES[1]:
        return f"pack size {pack_size!r} is out of range"
    return None


def pack_name(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


class Repository:
    def __init__(
        self, backend: Backend, master: MasterKey, config: RepoConfig, slot: KeySlot | None
    ) -> None:
        self.backend = backend
        self.master = master
        self.config = config
        # The key slot that opened it; None when opened with key material it shares with
        # another repository already open (see open_sharing).
        self.slot = slot
        self._index: MasterIndex | None = None
        self._index_lock = threading.Lock()
        # Damage met on the way (an unreadable index or snapshot) that did not stop the
        # operation: the CLI prints these so nobody mistakes a partial view for the whole.
        self.warnings: list[str] = []
        self.content_key = lru_cache(maxsize=4096)(self._unwrap)
        # Object Lock: how long new objects stay undeletable (the tier's floor; None: not
        # set by medvault), retain-until dates known to this process (lower bounds, since
        # retention only grows), and which index objects name each pack.
        self.retention_period: dt.timedelta | None = None
        self.retained: dict[str, dt.datetime] = {}
        self.pack_indexes: dict[str, list[str]] = {}
        # Packs a prune has condemned: still readable, but never deduplicated against.
        self.condemned: set[str] = set()
        # Failover on read: the secondary, opened on first need, and what was read from it.
        self.fallback: Callable[[], Repository] | None = None
        self.fallback_name = ""
        self._secondary: Repository | None = None
        self._secondary_failed = False
        self._fallback_lock = threading.Lock()
        self.failovers: dict[str, str] = {}  # object -> why the primary's copy was unusable
        # Snapshot set authentication: the head of the writing host's audit chain, named in
        # each snapshot saved (set by a session that records its runs in the audit trail).
        self.audit_head: Callable[[], AuditHead | None] | None = None
        # The run this process does (its locks name it), and stale locks met on the way: runs
        # killed without a record, for the session to record as interrupted.
        self.run_id = ""
        self.stale_locks: list[LockInfo] = []

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        credential: Credential,
        *,
        label: str = "",
        chunker: ChunkerParams | None = None,
        compression_level: int = 1,
        pack_size: int = 16 * 1024 * 1024,
        retention_period: dt.timedelta | None = None,
        like: Repository | None = None,
    ) -> Repository:
        """`like`: share that repository's master key and chunker, so that blob ids and
        chunk boundaries agree and copies between the two move packs as they are."""
        try:
            backend.create()
        except RepositoryExists:
            if not cls._remove_orphan_key_slots(backend):
                raise
            backend.create()
        master = like.master if like is not None else MasterKey.generate()
        if like is not None:
            chunker = like.config.chunker
            compression_level = like.config.compression_level
            pack_size = like.config.pack_size
        config = RepoConfig(
            version=FORMAT_VERSION,
            repo_id=secrets.token_hex(16),
            created=now_iso(),
            chunker=chunker or ChunkerParams(),
            compression_level=compression_level,
            pack_size=pack_size,
        )
        slot = KeySlot.create(master, credential, label)
        repo = cls(backend, master, config, slot)
        repo.retention_period = retention_period
        until = repo.retain_until()
        backend.store(f"keys/{slot.slot_id}", slot.to_json(), retain_until=until)
        faults.point("init.after-key-slot")
        # The config goes last: a repository whose init was interrupted has no config and is
        # reported as "not a repository" rather than opened half-made.
        backend.store("config", config.to_json(master), retain_until=until)
        return repo

    @staticmethod
    def _remove_orphan_key_slots(backend: Backend) -> bool:
        """An init killed between its key slot and its config leaves key slots and nothing
        else. With no config it is no repository, and its slots wrap a master key that never
        encrypted anything; left in place, one of them would open to that wrong key for the
        same passphrase. They are removed so that init can run again. True when they were;
        False (nothing touched) when there is a config or any data, snapshot or WAL."""
        if backend.exists("config"):
            return False
        for folder in ("data", "index", "snapshots", "wal"):
            if next(iter(backend.list(folder)), None) is not None:
                return False
        from medvault.repository import deletion

        orphans = [obj.name for obj in backend.list("keys")]
        for name in orphans:
            deletion.orphan_key_slot(backend, name)
        return bool(orphans)

    @staticmethod
    def probe(backend: Backend) -> tuple[RepoConfig, dict[str, Any]]:
        """The repository's config, checked for a format we read; no key needed."""
        try:
            raw = backend.load("config")
        except ObjectNotFound:
            raise RepositoryNotFound(
                f"no medvault repository at {backend.url}; create one with `medvault init`"
            ) from None
        return RepoConfig.parse(raw, backend.url)

    @classmethod
    def open(
        cls,
        backend: Backend,
        credential: Credential,
        probed: tuple[RepoConfig, dict[str, Any]] | None = None,
    ) -> Repository:
        """`probed`: what `probe` returned, when the caller already read the config."""
        config, doc = probed or cls.probe(backend)
        slots = cls.read_key_slots(backend)
        if not slots:
            raise IntegrityError(
                f"repository at {backend.url} has no key slots; restore keys/ from a copy"
            )
        master, slot = open_master_key(slots, credential)
        config.verify(doc, master)
        repo = cls(backend, master, config, slot)
        repo.warnings.extend(unusable_warning(s) for s in slots if not s.usable)
        return repo

    @classmethod
    def open_sharing(
        cls,
        backend: Backend,
        master: MasterKey,
        probed: tuple[RepoConfig, dict[str, Any]] | None = None,
    ) -> Repository | None:
        """Open with the master key of another repository when both share it (made with
        `init --copy-keys-from`): the config's MAC proves it, and no key derivation runs.
        Holding that key already grants everything this repository's slots would. None when
        the keys differ."""
        config, doc = probed or cls.probe(backend)
        try:
            config.verify(doc, master)
        except IntegrityError:
            return None
        return cls(backend, master, config, None)

    @staticmethod
    def read_key_slots(backend: Backend) -> list[KeySlot]:
        """Every key slot, in the order the store has held them (a slot planted later comes
        later, whatever it says of itself); unusable ones are marked (KeySlot.usable)."""
        found = []
        for obj in backend.list("keys"):
            slot_id = obj.name.split("/", 1)[1]
            raw = b""
            try:
                if obj.size > SLOT_MAX_BYTES:
                    raise SlotUnusable(f"it is {obj.size} bytes long (a slot is under 1 KiB)")
                raw = backend.load(obj.name)
                slot = KeySlot.from_json(slot_id, raw)
            except ObjectNotFound:
                continue  # removed while listing
            except SlotUnusable as exc:
                slot = KeySlot.unusable(slot_id, raw, exc)
            found.append((obj.modified or 0.0, slot.created, slot))
        return [slot for _, _, slot in sorted(found, key=lambda f: (f[0], f[1]))]

    def close(self) -> None:
        self.backend.close()

    # -- the store, as the layers above see it ---------------------------------------------
    # Nothing outside repository/ and backends/ touches `backend`: these are its questions.

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def local_path(self) -> str | None:
        """The repository's directory when it lies on this host's file system (a backup of a
        tree holding it leaves it out); None for a remote store."""
        return self.backend.local_path

    @property
    def concurrency(self) -> int:
        """How many reads are worth having in flight at once (Backend.concurrency)."""
        return self.backend.concurrency

    @property
    def lock_enabled(self) -> bool:
        """Whether the store enforces retain-until dates and legal holds (S3 Object Lock)."""
        return self.backend.lock_enabled

    def stored_bytes(self) -> int:
        """What the packs (data/) take in the store, as the store counts it."""
        return sum(obj.size for obj in self.backend.list("data"))

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Forget a snapshot: its object goes, its data stays for prune (repository/deletion.py
        says when that is allowed). ObjectLocked when the store keeps it."""
        from medvault.repository import deletion

        deletion.forget_snapshot(self, snapshot_id)

    def undeletable_reason(self, snapshot_id: str) -> str | None:
        """Why the store would refuse to delete this snapshot now (an append-only repository,
        Object Lock retention); None when it would not."""
        from medvault.repository import deletion

        return deletion.snapshot_refusal(self, snapshot_id)

    def delete_hold(self, snapshot_id: str) -> None:
        """Remove the hold record of a snapshot, once its release record is stored."""
        from medvault.repository import deletion

        deletion.hold_record(self, snapshot_id)

    # -- key slots -------------------------------------------------------------------------

    def key_slots(self) -> list[KeySlot]:
        return self.read_key_slots(self.backend)

    def _key_change(self, purpose: str) -> RepositoryLock:
        """Key changes run one at a time (a lock of scope "keys"), beside backups."""
        return self.lock(exclusive=False, scope="keys", purpose=purpose)

    def add_key(self, credential: Credential, label: str = "") -> KeySlot:
        with self._key_change("key add"):
            slot = self._store_key_slot(credential, label)
            faults.point("key.after-add")
            return slot

    def _store_key_slot(self, credential: Credential, label: str) -> KeySlot:
        slot = KeySlot.create(self.master, credential, label)
        self.backend.store(f"keys/{slot.slot_id}", slot.to_json(), retain_until=self.retain_until())
        return slot

    def find_key(self, prefix: str) -> KeySlot:
        matches = [s for s in self.key_slots() if s.slot_id.startswith(prefix)]
        if len(matches) != 1:
            what = "no" if not matches else "more than one"
            raise UsageError(f"{what} key slot matches {prefix!r}; see `medvault key list`")
        return matches[0]

    def remove_key(self, slot_id: str) -> None:
        """Delete a key slot, never the last one that opens the repository: the slots are
        read again under the key-change lock, so two removals at once cannot each leave the
        other's slot last."""
        from medvault.repository import deletion

        with self._key_change("key remove") as lock:
            slots = self.key_slots()
            if slot_id not in {s.slot_id for s in slots}:
                raise UsageError(f"no key slot {slot_id}")
            if not [s for s in slots if s.usable and s.slot_id != slot_id]:
                raise UsageError(
                    "refusing to remove the last key slot that opens the repository: "
                    "it would be lost"
                )
            lock.ensure_held()
            faults.point("key.before-delete")
            deletion.key_slot(self, slot_id)
            faults.point("key.after-delete")

    def change_passphrase(self, credential: Credential) -> KeySlot:
        """Rewrap the master key in a new slot, then drop the slot that opened this session."""
        if self.slot is None:
            raise UsageError("open the repository with its own passphrase to change it")
        with self._key_change("key passwd"):
            return self._replace_slot(self.slot, credential)

    def _replace_slot(self, old: KeySlot, credential: Credential) -> KeySlot:
        from medvault.repository import deletion

        new = self._store_key_slot(credential, old.label)
        faults.point("key.after-new-slot")
        try:
            deletion.key_slot(self, old.slot_id)
            faults.point("key.after-old-slot-delete")
        except ObjectLocked as exc:
            self.warnings.append(
                f"the old key slot {old.slot_id} stays ({exc}): until then the old "
                "passphrase still opens the repository"
            )
        self.slot = new
        return new

    # -- sealing ---------------------------------------------------------------------------

    def seal(self, payload: bytes, kind: bytes) -> bytes:
        """An object named by the hash of what this returns (index, snapshot): the name is
        bound by the hash, the kind by the AAD. Named records use store_record."""
        encoded = compression.encode(payload, METADATA_ZSTD_LEVEL)
        return seal_object(self.master.current, encoded, kind)

    def unseal(self, data: bytes, kind: bytes) -> bytes:
        return compression.decode(open_object(self.master.keks, data, kind))

    def store_record(
        self,
        name: str,
        payload: bytes,
        kind: bytes,
        *,
        overwrite: bool = False,
        retention: dt.timedelta | None = None,
    ) -> None:
        """Seal `payload` bound to its kind and to `name`, and store it there (ObjectExists
        when the name is taken, unless `overwrite`). `retention`: how long it stays
        undeletable where the store can lock it, when not the repository's own period (audit
        records keep the audit retention)."""
        encoded = compression.encode(payload, METADATA_ZSTD_LEVEL)
        sealed = seal_object(self.master.current, encoded, record_aad(kind, name))
        self.store_object(name, sealed, overwrite=overwrite, retention=retention)

    def load_record(self, name: str, kind: bytes) -> bytes:
        """The payload of the record stored as `name`; ObjectNotFound when absent,
        IntegrityError when it does not open as a `kind` record of that name."""
        return self.open_record(name, self.load_record_bytes(name), kind)

    def load_record_bytes(self, name: str) -> bytes:
        """A record as stored, unopened (ObjectNotFound when absent): for trying it against
        other names, to tell a record copied from elsewhere from a damaged one."""
        self._check_record_folder(name)
        return self.backend.load(name)

    def list_records(self, folder: str) -> list[str]:
        """The names of the records under `folder` (holds, drills, prune/condemned, …), those
        in folders below it too, in no particular order."""
        self._check_record_folder(folder)
        return [obj.name for obj in self.backend.list(folder)]

    @staticmethod
    def _check_record_folder(name: str) -> None:
        if name.split("/", 1)[0] not in RECORD_FOLDERS:
            raise ValueError(f"{name} is not among the records ({', '.join(RECORD_FOLDERS)})")

    def open_record(self, name: str, data: bytes, kind: bytes) -> bytes:
        """`data` opened as the `kind` record named `name`."""
        try:
            return compression.decode(open_object(self.master.keks, data, record_aad(kind, name)))
        except IntegrityError as exc:
            raise IntegrityError(
                f"record {name} does not open under its name: damaged, or copied there "
                f"from another name ({exc})"
            ) from exc

    def _store_sealed(self, folder: str, payload: bytes, kind: bytes) -> str:
        data = self.seal(payload, kind)
        object_id = storage_id(data)
        self.store_object(f"{folder}/{object_id}", data)
        return object_id

    def retain_until(self, period: dt.timedelta | None = None) -> dt.datetime | None:
        """The retain-until date for an object written now: the retention period (`period`,
        else the repository's) plus a margin (objectlock.slack), so that packs written early
        in a long backup still outlast the snapshot's period. None where the store has no
        Object Lock or no retention is set."""
        period = period if period is not None else self.retention_period
        if period is None or not self.backend.lock_enabled:
            return None
        from medvault.repository.objectlock import slack

        return dt.datetime.now(dt.UTC) + period + slack(period)

    def store_object(
        self,
        name: str,
        data: bytes,
        *,
        overwrite: bool = False,
        retention: dt.timedelta | None = None,
    ) -> None:
        """Store a new object, locked for the retention period (`retention`, else the
        repository's) where the store can."""
        until = self.retain_until(retention)
        self.backend.store(name, data, overwrite=overwrite, retain_until=until)
        if until is not None:
            self.retained[name] = until

    def _unwrap(self, key_block: bytes) -> bytes:
        return unwrap_content_key(self.master.keks, key_block)

    # -- index -----------------------------------------------------------------------------

    @property
    def index(self) -> MasterIndex:
        if self._index is None:
            with self._index_lock:
                if self._index is None:
                    self.load_index()
        assert self._index is not None
        return self._index

    def index_ids(self) -> list[str]:
        return [obj.name.split("/", 1)[1] for obj in self.backend.list("index")]

    def read_index(self, index_id: str) -> tuple[list[tuple[str, bytes, bytes]], list[str]]:
        data = self.backend.load(f"index/{index_id}")
        if storage_id(data) != index_id:
            raise IntegrityError(f"index {index_id[:12]} does not match its id (damaged)")
        return decode_index(self.unseal(data, KIND_INDEX))

    def load_index(self, *, strict: bool = False) -> list[tuple[str, str]]:
        """Load every index object. A damaged one is skipped (its packs' blobs then look
        absent: a backup stores them again, a restore names what it cannot find) and
        returned as (id, reason); with strict=True it is an error instead."""
        index = MasterIndex()
        failures = []
        for index_id in self.index_ids():
            try:
                packs, _ = self.read_index(index_id)
            except (IntegrityError, ObjectNotFound) as exc:
                if strict:
                    raise IntegrityError(
                        f"index {index_id[:12]} is damaged ({exc}); run `medvault check`"
                    ) from exc
                failures.append((index_id, str(exc)))
                self.warnings.append(
                    f"index {index_id[:12]} is unreadable ({exc}); run `medvault check`"
                )
                continue
            for pack_id, key_block, table in packs:
                index.add_table(pack_id, key_block, table)
                self.pack_indexes.setdefault(pack_id, []).append(index_id)
        index.merge()
        from medvault.repository.prune import condemned_packs

        self.condemned = condemned_packs(self)
        self._index = index
        return failures

    def write_index(self, packs: list[PackRecord], supersedes: tuple[str, ...] = ()) -> str:
        index_id = self._store_sealed("index", encode_index(packs, supersedes), KIND_INDEX)
        for pack in packs:
            self.pack_indexes.setdefault(pack.pack_id, []).append(index_id)
        return index_id

    # -- blobs -----------------------------------------------------------------------------

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return self.master.blob_id(data)

    # -- failover --------------------------------------------------------------------------

    def secondary(self) -> Repository | None:
        """The secondary repository, opened once; None when there is none or it cannot be
        opened (said in a warning)."""
        if self.fallback is None or self._secondary_failed:
            return self._secondary
        with self._fallback_lock:
            if self._secondary is None and not self._secondary_failed:
                try:
                    self._secondary = self.fallback()
                except MedvaultError as exc:
                    self._secondary_failed = True
                    self.warnings.append(
                        f"the secondary {self.fallback_name} could not be opened to read "
                        f"what the primary lacks: {exc}"
                    )
        return self._secondary

    def record_failover(self, what: str, reason: str) -> None:
        self.failovers.setdefault(what, reason)

    def failover_summary(self) -> str | None:
        if not self.failovers:
            return None
        shown = "; ".join(f"{what} ({why})" for what, why in list(self.failovers.items())[:5])
        more = f" and {len(self.failovers) - 5} more" if len(self.failovers) > 5 else ""
        return (
            f"read from the secondary {self.fallback_name} because the primary's copy was "
            f"missing or damaged: {shown}{more}; run `medvault repair --from "
            f"{self.fallback_name}`"
        )

    def _blob_secondary(self) -> Repository | None:
        """The secondary when it can serve blobs by the same ids (shared key material)."""
        other = self.secondary()
        if other is None:
            return None
        from medvault.repository.copy import shares_keys

        if not shares_keys(self, other):
            message = (
                f"the secondary {self.fallback_name} has its own keys, so blobs cannot be "
                "read from it in place of damaged ones; restore from it directly"
            )
            if message not in self.warnings:
                self.warnings.append(message)
            return None
        return other

    def load_blob(self, blob_id: bytes) -> bytes:
        """Read, authenticate, decompress and re-hash one blob; from the secondary when the
        primary's copy is missing or damaged and a secondary shares the keys."""
        try:
            return self._load_blob_here(blob_id)
        except IntegrityError as exc:
            other = self._blob_secondary() if self.fallback is not None else None
            if other is None:
                raise
            try:
                data = other.load_blob(blob_id)
            except MedvaultError:
                raise exc from None
            location = self.index.lookup(blob_id)
            what = f"pack {location.pack_id[:16]}" if location else f"blob {blob_id.hex()[:16]}"
            self.record_failover(what, str(exc))
            return data

    def load_blob_encoded(self, blob_id: bytes) -> tuple[bytes, bytes | None]:
        """The blob and its stored encoding (compressed or raw, as `compression` writes it),
        for re-sealing it elsewhere without compressing it again; None for the encoding when
        it came from the secondary."""
        try:
            return self._read_blob(blob_id)
        except IntegrityError:
            return self.load_blob(blob_id), None

    def _load_blob_here(self, blob_id: bytes) -> bytes:
        return self._read_blob(blob_id)[0]

    def _read_blob(self, blob_id: bytes) -> tuple[bytes, bytes]:
        location = self.index.lookup(blob_id)
        if location is None:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} is not in any index")
        try:
            return self._read_blob_at(blob_id, location)
        except IntegrityError:
            # A repack leaves a second copy until prune deletes the first: try the others.
            for other in self.index.locations(blob_id):
                if other.pack_id != location.pack_id:
                    with contextlib.suppress(IntegrityError):
                        return self._read_blob_at(blob_id, other)
            raise

    def _read_blob_at(self, blob_id: bytes, location: BlobLocation) -> tuple[bytes, bytes]:
        entry = location.entry
        name = pack_name(location.pack_id)
        try:
            # From a remote store, through windows of the pack (backends/windows.py).
            sealed = self.backend.load(name, entry.offset, entry.length)
        except ObjectNotFound:
            raise IntegrityError(
                f"pack {location.pack_id[:16]} holding blob {blob_id.hex()[:16]} is missing"
            ) from None
        except BackendError as exc:
            raise IntegrityError(f"pack {location.pack_id[:16]}: {exc}") from exc
        payload = open_blob(self.content_key(location.key_block), entry, sealed)
        data = compression.decode(payload, entry.raw_length)
        if len(data) != entry.raw_length or self.blob_id(data) != blob_id:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} does not match its id")
        return data, payload

    def load_tree(self, tree_id: bytes) -> list[Node]:
        return decode_tree(self.load_blob(tree_id))

    def referenced_blobs(
        self,
        tree_id: bytes,
        into: set[bytes] | None = None,
        walked: set[bytes] | None = None,
    ) -> set[bytes]:
        """Every blob a tree needs: its own, its subtrees' and their files' content. With
        `into` and `walked` (what earlier trees needed, and which trees were read), added to
        `into`, and trees already walked are not read again: snapshots of one source share
        most of their trees. (Trees are tracked apart: a file's content may equal a tree's.)"""
        blobs = into if into is not None else set()
        seen = walked if walked is not None else set()
        blobs.add(tree_id)
        stack = [tree_id] if tree_id not in seen else []
        seen.add(tree_id)
        while stack:
            for node in self.load_tree(stack.pop()):
                blobs.update(node.content)
                if node.subtree is not None:
                    blobs.add(node.subtree)
                    if node.subtree not in seen:
                        seen.add(node.subtree)
                        stack.append(node.subtree)
        return blobs

    def walk(self, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
        """Depth-first (path, node) pairs below a tree; paths are '/'-joined bytes. An
        explicit stack, and the names of the current path rather than a path per level: a
        tree may be deeper than the recursion limit, and a path per level would make
        memory grow with the square of the depth."""
        levels = [iter(self.load_tree(tree_id))]
        names = [prefix] if prefix else []  # the path to the level being listed
        while levels:
            node = next(levels[-1], None)
            if node is None:
                levels.pop()
                if levels:
                    names.pop()
                continue
            yield b"/".join([*names, node.name]), node
            if node.subtree is not None:
                names.append(node.name)
                levels.append(iter(self.load_tree(node.subtree)))

    # -- snapshots -------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot, lock: RepositoryLock | None = None) -> str:
        """Commit a snapshot. `lock`: the lock the backup holds, checked just before."""
        self._prepare_commit(snapshot, lock)
        if snapshot.audit_head is None and snapshot.origin is None and self.audit_head:
            # Read before the snapshot is stored: the backup's own record comes after it.
            head = self.audit_head()
            if head is not None:
                snapshot = replace(snapshot, audit_head=head)
        snapshot_id = self._store_sealed("snapshots", encode_snapshot(snapshot), KIND_SNAPSHOT)
        faults.point("snapshot.after-store")
        return snapshot_id

    def save_snapshot_object(
        self, snapshot: Snapshot, sealed: bytes, lock: RepositoryLock | None = None
    ) -> None:
        """Store a snapshot object as sealed elsewhere under the same keys (a raw copy)."""
        self._prepare_commit(snapshot, lock)
        with contextlib.suppress(ObjectExists):
            self.store_object(f"snapshots/{storage_id(sealed)}", sealed)

    def _prepare_commit(self, snapshot: Snapshot, lock: RepositoryLock | None) -> None:
        if self.index.lookup(snapshot.tree) is None:
            raise IntegrityError("refusing to save a snapshot whose tree is not indexed")
        faults.point("snapshot.before-commit")
        self._store_again_what_prune_condemned(snapshot.tree)
        self._protect_snapshot_data(snapshot)
        if lock is not None:
            lock.ensure_held()
        faults.point("snapshot.before-store")

    def _store_again_what_prune_condemned(self, tree: bytes) -> None:
        """A prune that stored its record after this process read the condemned packs did not
        stop it from deduplicating against them; the prune waits only for locks that existed
        when its record was stored, which ours may not. So read the records again: any blob
        this snapshot needs that lives only in a condemned pack is stored anew. A prune that
        stores its record after this reading finds our lock and waits for us."""
        from medvault.repository.prune import condemned_packs

        current = condemned_packs(self)
        fresh = current - self.condemned
        self.condemned |= current
        if not fresh:
            return
        at_risk = []
        for blob_id in self.referenced_blobs(tree):
            locations = self.index.locations(blob_id)
            if locations and all(loc.pack_id in self.condemned for loc in locations):
                at_risk.append((blob_id, locations[0].entry.blob_type))
        if not at_risk:
            return
        from medvault.repository.writer import BlobSink

        sink = BlobSink(self)
        try:
            for blob_id, blob_type in at_risk:
                sink.submit(self.load_blob(blob_id), blob_type)
            sink.flush()
        except IntegrityError as exc:
            sink.abort()
            raise RepositoryLocked(
                f"a prune running beside this backup removed data it reuses ({exc}); "
                "nothing was committed: run the backup again"
            ) from exc
        except BaseException:
            sink.abort()
            raise

    def _protect_snapshot_data(self, snapshot: Snapshot) -> None:
        """On a locked store, packs reused from older backups must stay locked for this
        snapshot's period too."""
        until = self.retain_until()
        if until is not None and self.retention_period is not None:
            from medvault.repository import objectlock

            required = dt.datetime.now(dt.UTC) + self.retention_period
            objectlock.protect(self, snapshot.tree, required, until)

    def snapshot_ids(self) -> list[str]:
        return [obj.name.split("/", 1)[1] for obj in self.backend.list("snapshots")]

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        try:
            data = self.backend.load(f"snapshots/{snapshot_id}")
        except ObjectNotFound:
            raise SnapshotNotFound(f"no snapshot {snapshot_id[:12]}") from None
        if storage_id(data) != snapshot_id:
            raise IntegrityError(f"snapshot {snapshot_id[:12]} does not match its id (damaged)")
        return decode_snapshot(self.unseal(data, KIND_SNAPSHOT), snapshot_id)

    def list_snapshots(self) -> list[Snapshot]:
        """Every readable snapshot, oldest first; damaged ones are left out with a warning."""
        snapshots = []
        for snapshot_id in self.snapshot_ids():
            try:
                snapshots.append(self.load_snapshot(snapshot_id))
            except (IntegrityError, SnapshotNotFound) as exc:
                self.warnings.append(f"snapshot {snapshot_id[:12]} is unreadable: {exc}")
        return sorted(snapshots, key=lambda s: s.time)

    def newest(self, snapshots: list[Snapshot]) -> Snapshot | None:
        """The newest of these snapshots (oldest first, as list_snapshots gives them) that is
        not dated in the future: a host whose clock ran years ahead must not make its
        snapshot "latest" forever. The ones passed over are named in a warning."""
        from medvault.clocks import ahead_by, describe_span

        for snap in reversed(snapshots):
            ahead = ahead_by(snap.taken)
            if ahead is None:
                return snap
            message = (
                f"snapshot {snap.short_id} of {snap.source} is dated {snap.time}, "
                f"{describe_span(ahead)} ahead of this host's clock (the clock of "
                f"{snap.host} or of this host is wrong): not taken as the newest; "
                "give its id to use it"
            )
            if message not in self.warnings:
                self.warnings.append(message)
        return None

    def find_snapshot(self, selector: str) -> Snapshot:
        """An id or unique id prefix, `latest`, or `latest:SOURCE`."""
        if selector == "latest" or selector.startswith("latest:"):
            source = selector.partition(":")[2]
            snaps = [s for s in self.list_snapshots() if not source or s.source == source]
            where = f" of source {source}" if source else ""
            if not snaps:
                raise SnapshotNotFound(f"the repository holds no snapshot{where}")
            newest = self.newest(snaps)
            if newest is None:
                raise SnapshotNotFound(
                    f"every snapshot{where} is dated in the future ({self.warnings[-1]}); "
                    "give a snapshot id"
                )
            return newest
        if len(selector) < 4 or any(c not in "0123456789abcdef" for c in selector):
            raise UsageError(f"{selector!r} is not a snapshot id (give 4+ hex digits or latest)")
        matches = [i for i in self.snapshot_ids() if i.startswith(selector)]
        if not matches:
            raise SnapshotNotFound(f"no snapshot {selector}; see `medvault snapshots`")
        if len(matches) > 1:
            raise UsageError(f"snapshot id {selector} is ambiguous; give more digits")
        return self.load_snapshot(matches[0])

    # -- locks -----------------------------------------------------------------------------

    def lock(self, *, exclusive: bool, purpose: str, scope: str = "") -> RepositoryLock:
        def acquired() -> None:
            self.warnings.extend(note for note in lock.notes if note not in self.warnings)
            self._met_stale(lock.stale_seen)
            # Prune records stored before our lock: a prune stored after it waits for us.
            if self._index is not None:
                from medvault.repository.prune import condemned_packs

                self.condemned |= condemned_packs(self)

        lock = RepositoryLock(
            self.backend,
            exclusive=exclusive,
            purpose=purpose,
            scope=scope,
            on_acquired=acquired,
            run_id=self.run_id,
        )
        return lock

    def _met_stale(self, locks: list[LockInfo]) -> None:
        known = {lock.name for lock in self.stale_locks}
        self.stale_locks += [lock for lock in locks if lock.run_id and lock.name not in known]

    def locks(self) -> LockTable:
        """Every lock object now, parsed (malformed ones apart)."""
        return read_locks(self.backend)

    def store_time(self) -> float | None:
        """The store's clock now (a lock written and read back for that alone)."""
        return store_time(self.backend)

    def unlock(self, *, remove_all: bool = False) -> UnlockResult:
        """Remove stale and malformed locks (every lock with remove_all)."""
        result = remove_stale_locks(self.backend, remove_all=remove_all)
        self._met_stale(result.stale)
        return result
