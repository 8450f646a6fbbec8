"""Prune: remove the data no snapshot needs, while backups keep running.

Deleting a pack that looks unused is only safe if no backup still in flight refers to it: a
backup may have deduplicated against a blob of a forgotten snapshot, or uploaded a pack it
has not indexed yet. So prune works in two phases, and never compares the clocks of hosts:

1. Condemn. Packs none of whose blobs any snapshot needs, and packs mostly unused (their
   used blobs are first written again into new packs), older than a safety margin by the
   store's clock, are listed in a sealed record `prune/condemned/<name>`. Nothing is
   deleted. From then on backups do not deduplicate against condemned packs. Right after
   the record is stored, prune lists the live locks and stores their names in
   `prune/waits/<name>`: those are the only writers that may have read the condemned
   records before this one existed. A writer whose lock came later sees the record: it
   reads the records once more just before it commits a snapshot, and stores anew any blob
   it needs that lives only in a condemned pack (Repository.save_snapshot).
2. Delete, once every lock named in the waits record is gone or stale (lock names are
   random ids, so a lock is never mistaken for another). On a quiet repository that is at
   once, in the same run; with a backup running, a later run does it. Each condemned pack
   is checked again against the snapshots as they are now: it goes only if every blob in it
   that a snapshot needs has a copy in a pack that stays. Index objects naming deleted packs
   are rewritten without them (new index first, then the old ones removed), then the packs
   are deleted, then the records.

A prune that dies between storing the condemned record and the waits record leaves a record
without waits; the next run writes the waits from the locks live then, a superset of those
that can still matter. Readers (restore, check) still see condemned packs until they are
deleted. Packs the store keeps immutable (Object Lock) are never condemned; they are counted
and named in the report. One prune runs at a time (its lock's scope is "prune").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medvault import faults
from medvault.errors import IntegrityError, ObjectLocked, ObjectNotFound
from medvault.repository import deletion
from medvault.repository.records import json_object
from medvault.repository.repo import pack_name

if TYPE_CHECKING:
    from medvault.repository.index import PackRecord
    from medvault.repository.locks import LockTable, RepositoryLock
    from medvault.repository.repo import Repository

FOLDER = "prune/condemned"
WAITS_FOLDER = "prune/waits"
KIND_CONDEMNED = b"prune-condemned"
KIND_WAITS = b"prune-waits"
DEFAULT_YOUNG = dt.timedelta(hours=1)


@dataclass
class PruneResult:
    condemned_packs: int = 0
    condemned_bytes: int = 0
    repacked_packs: int = 0
    repacked_bytes: int = 0  # used bytes written again
    deleted_packs: int = 0
    freed_bytes: int = 0
    deleted_indexes: int = 0
    kept_locked: int = 0
    kept_young: int = 0
    reprieved: int = 0  # condemned packs a snapshot came to need again
    waiting: list[str] = field(default_factory=list)  # records held back by live locks


@dataclass(frozen=True)
class Condemned:
    name: str
    created: float  # the condemning host's clock: for people, never for decisions
    packs: frozenset[str]

    @property
    def leaf(self) -> str:
        return self.name.rsplit("/", 1)[1]


_PACK_ID = re.compile(r"[0-9a-f]{64}")
_LOCK_NAME = re.compile(r"locks/[0-9a-f]{32}")


def decode_condemned(name: str, plaintext: bytes) -> Condemned:
    """A condemned record, every field checked: its pack ids become names prune deletes."""
    doc = json_object(plaintext, "prune record")
    stamp, packs = doc.get("time"), doc.get("packs")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        raise IntegrityError("prune record has no time")
    try:
        created = float(stamp)  # an integer of 400 digits is JSON too
    except OverflowError as exc:
        raise IntegrityError("prune record has no time") from exc
    if not math.isfinite(created):
        raise IntegrityError("prune record has no time")
    if not isinstance(packs, list) or not all(
        isinstance(p, str) and _PACK_ID.fullmatch(p) for p in packs
    ):
        raise IntegrityError("prune record names something that is not a pack id")
    return Condemned(name, created, frozenset(packs))


def decode_waits(plaintext: bytes) -> frozenset[str]:
    """The lock names a waits record lists."""
    locks = json_object(plaintext, "prune record").get("locks")
    if not isinstance(locks, list) or not all(
        isinstance(n, str) and _LOCK_NAME.fullmatch(n) for n in locks
    ):
        raise IntegrityError("prune record names something that is not a lock")
    return frozenset(locks)


def read_condemned(repo: Repository) -> list[Condemned]:
    records = []
    for name in repo.list_records(FOLDER):
        try:
            records.append(decode_condemned(name, repo.load_record(name, KIND_CONDEMNED)))
        except (IntegrityError, ObjectNotFound):
            repo.warnings.append(f"prune record {name} is unreadable; ignored")
    return sorted(records, key=lambda r: r.name)


def read_waits(repo: Repository) -> dict[str, frozenset[str]]:
    """Condemned record leaf name -> names of the locks its deletion waits for."""
    waits = {}
    for name in repo.list_records(WAITS_FOLDER):
        try:
            plaintext = repo.load_record(name, KIND_WAITS)
            waits[name.rsplit("/", 1)[1]] = decode_waits(plaintext)
        except (IntegrityError, ObjectNotFound):
            # Unreadable: as if absent, so the next run writes it again (conservatively).
            repo.warnings.append(f"prune record {name} is unreadable; ignored")
    return waits


def condemned_packs(repo: Repository) -> set[str]:
    return {pack for record in read_condemned(repo) for pack in record.packs}


def _used_blobs(repo: Repository) -> set[bytes]:
    used: set[bytes] = set()
    walked: set[bytes] = set()
    for snap in repo.list_snapshots():
        repo.referenced_blobs(snap.tree, into=used, walked=walked)
    return used


def _pack_sizes(repo: Repository) -> dict[str, tuple[int, float | None]]:
    return {
        obj.name.rsplit("/", 1)[1]: (obj.size, obj.modified) for obj in repo.backend.list("data")
    }


class Pruner:
    def __init__(
        self,
        repo: Repository,
        lock: RepositoryLock,
        *,
        dry_run: bool = False,
        repack_unused: float = 0.5,
        young: dt.timedelta = DEFAULT_YOUNG,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """`lock`: this prune's own lock (scope "prune"), taken by the caller."""
        self.repo = repo
        self.lock = lock
        self.dry_run = dry_run
        self.repack_unused = repack_unused
        self.young = young
        self.result = PruneResult()
        self._on_progress = on_progress
        # The pack listing condemn made: still true for the delete phase of the same run
        # (only a prune deletes packs, and no other prune runs beside this one).
        self._listing: dict[str, tuple[int, float | None]] | None = None

    def run(self) -> PruneResult:
        self.finish_earlier()
        if self.condemn() and not self.dry_run:
            # Nobody may have read the condemned packs without our record: then they go now.
            self.finish_earlier()
        return self.result

    def _live_others(self, table: LockTable) -> dict[str, str]:
        """Live locks other than ours: name -> description."""
        return {
            lock.name: lock.describe(table.store_now)
            for lock in table.live(exclude=[self.lock.name])
        }

    # -- phase 2 ---------------------------------------------------------------------------

    def finish_earlier(self) -> None:
        records = read_condemned(self.repo)
        waits = read_waits(self.repo)
        self._drop_orphan_waits(records, waits)
        if not records:
            return
        live = self._live_others(self.lock.observe())
        ripe = []
        for record in records:
            waiting_on = waits.get(record.leaf)
            if waiting_on is None:
                # Its prune died before naming the locks: every lock live now is a superset
                # of those that existed then and still live.
                waiting_on = frozenset(live)
                if not self.dry_run:
                    self._store_waits(record.leaf, waiting_on)
            blocking = [live[name] for name in sorted(waiting_on) if name in live]
            if blocking:
                self.result.waiting.append(f"{record.name}: waits for {blocking[0]}")
            else:
                ripe.append(record)
        if not ripe:
            return
        condemned = {pack for record in records for pack in record.packs}
        doomed = {pack for record in ripe for pack in record.packs}
        used = _used_blobs(self.repo)
        packs = {pack.pack_id: pack for pack in self.repo.index.packs()}
        needed = {
            pack_id: [e.blob_id for e in packs[pack_id].entries if e.blob_id in used]
            if pack_id in packs
            else []
            for pack_id in doomed
        }
        # Where else the still-needed blobs of doomed packs live: only those blobs are
        # mapped, so memory follows what is being removed, not the whole index.
        wanted = {blob for blobs in needed.values() for blob in blobs}
        elsewhere: set[bytes] = set()
        if wanted:
            for pack in packs.values():
                if pack.pack_id not in condemned:
                    elsewhere.update(e.blob_id for e in pack.entries if e.blob_id in wanted)
        deletable = set()
        for pack_id in doomed:
            if all(blob in elsewhere for blob in needed[pack_id]):
                deletable.add(pack_id)
            else:
                self.result.reprieved += 1
        sizes = self._listing if self._listing is not None else _pack_sizes(self.repo)
        self.result.deleted_packs += len(deletable & set(sizes))
        self.result.freed_bytes += sum(sizes[p][0] for p in deletable if p in sizes)
        if self.dry_run:
            return
        # Our own lock must still be ours: if it was taken for stale, another prune may run.
        self.lock.ensure_held()
        faults.point("prune.before-delete")
        kept = deletable - self._rewrite_indexes(deletable)
        deletable -= kept
        self.result.deleted_packs -= len(kept & set(sizes))
        self.result.freed_bytes -= sum(sizes[p][0] for p in kept if p in sizes)
        self.repo.index.drop_packs(deletable)
        for pack_id in sorted(deletable):
            try:
                deletion.pack(self.repo, pack_id)
            except ObjectNotFound:
                continue
            except ObjectLocked:
                self.result.kept_locked += 1
            faults.point("prune.after-pack-delete")
        faults.point("prune.after-delete")
        for record in ripe:
            deletion.prune_record(self.repo, record.name)
            with contextlib.suppress(ObjectNotFound):
                deletion.prune_record(self.repo, f"{WAITS_FOLDER}/{record.leaf}")

    def _store_waits(self, leaf: str, lock_names: frozenset[str]) -> None:
        body = json.dumps({"record": f"{FOLDER}/{leaf}", "locks": sorted(lock_names)}).encode()
        self.repo.store_record(f"{WAITS_FOLDER}/{leaf}", body, KIND_WAITS)

    def _drop_orphan_waits(
        self, records: list[Condemned], waits: dict[str, frozenset[str]]
    ) -> None:
        """Waits whose record is gone: a prune died between deleting the two."""
        if self.dry_run:
            return
        leaves = {record.leaf for record in records}
        for leaf in waits.keys() - leaves:
            with contextlib.suppress(ObjectNotFound):
                deletion.prune_record(self.repo, f"{WAITS_FOLDER}/{leaf}")

    def _rewrite_indexes(self, deletable: set[str]) -> set[str]:
        """Each index object naming a deleted pack is replaced by one without it. An index
        the store will not let go (Object Lock, legal hold) keeps naming its packs, so those
        stay too: the packs that may go are returned."""
        from medvault.repository.index import PackRecord
        from medvault.repository.packs import unpack_entries

        for index_id in self.repo.index_ids():
            try:
                packs, _ = self.repo.read_index(index_id)
            except (IntegrityError, ObjectNotFound):
                continue
            if not any(pack_id in deletable for pack_id, _, _ in packs):
                continue
            keep = [
                PackRecord(pack_id, key_block, unpack_entries(table))
                for pack_id, key_block, table in packs
                if pack_id not in deletable
            ]
            if keep:
                self.repo.write_index(keep, supersedes=(index_id,))
            faults.point("prune.before-index-delete")
            try:
                deletion.superseded_index(self.repo, index_id)
            except ObjectLocked:
                named = {pack_id for pack_id, _, _ in packs} & deletable
                self.result.kept_locked += len(named)
                deletable = deletable - named
                continue
            self.result.deleted_indexes += 1
        return deletable

    # -- phase 1 ---------------------------------------------------------------------------

    def condemn(self) -> bool:
        """True when a record was written."""
        already = condemned_packs(self.repo)
        used = _used_blobs(self.repo)
        sizes = self._listing = _pack_sizes(self.repo)
        # Pack ages by the store's clock (its modification times against that of our lock
        # rewritten just now), so a skewed host clock cannot make a fresh pack look old.
        store_now = self.lock.observe().store_now
        now = store_now if store_now is not None else time.time()
        records = {record.pack_id: record for record in self.repo.index.packs()}
        doomed: list[str] = []
        repack: list[PackRecord] = []
        for pack_id, (_size, modified) in sorted(sizes.items()):
            if pack_id in already:
                continue
            if self.young and modified is not None and now - modified < self.young.total_seconds():
                self.result.kept_young += 1
                continue
            record = records.get(pack_id)
            if record is None:
                doomed.append(pack_id)  # never indexed: left by an interrupted backup
                continue
            live = sum(e.length for e in record.entries if e.blob_id in used)
            total = sum(e.length for e in record.entries) or 1
            if live == 0:
                doomed.append(pack_id)
            elif 1 - live / total >= self.repack_unused:
                repack.append(record)
        candidates = doomed + [r.pack_id for r in repack]
        locked = self._locked(candidates)
        self.result.kept_locked += len(locked)
        doomed = [p for p in doomed if p not in locked]
        repack = [r for r in repack if r.pack_id not in locked]
        self.result.condemned_packs = len(doomed) + len(repack)
        self.result.condemned_bytes = sum(sizes[p][0] for p in doomed) + sum(
            sizes[r.pack_id][0] for r in repack
        )
        self.result.repacked_packs = len(repack)
        self.result.repacked_bytes = sum(
            e.raw_length for r in repack for e in r.entries if e.blob_id in used
        )
        if self.dry_run or not (doomed or repack):
            return False
        packs = sorted(doomed + [r.pack_id for r in repack])
        faults.point("prune.before-record")
        # The record first: from here on backups store these packs' blobs anew. Its name
        # sorts by time for people; nothing decides by it.
        written = time.time()
        body = json.dumps({"time": written, "packs": packs}).encode()
        leaf = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(written))}-{secrets.token_hex(4)}"
        self.repo.store_record(f"{FOLDER}/{leaf}", body, KIND_CONDEMNED)
        self.repo.condemned.update(packs)
        faults.point("prune.after-record")
        # Then the locks live now: only they may have read the records before this one.
        self._store_waits(leaf, frozenset(self._live_others(self.lock.observe())))
        faults.point("prune.after-waits")
        if repack:
            self._repack(repack, used)
            faults.point("prune.after-repack")
        return True

    def _locked(self, pack_ids: list[str]) -> set[str]:
        backend = self.repo.backend
        if backend.immutable:
            return set(pack_ids)
        if not backend.lock_enabled:
            return set()
        now = dt.datetime.now(dt.UTC)
        locked = set()
        for pack_id in pack_ids:
            until = backend.retention(pack_name(pack_id))
            if (until is not None and until > now) or backend.legal_hold(pack_name(pack_id)):
                locked.add(pack_id)
        return locked

    def _repack(self, repack: list[PackRecord], used: set[bytes]) -> None:
        """Write the used blobs of mostly-unused packs into new packs."""
        from medvault.repository.writer import BlobSink

        sink = BlobSink(self.repo)
        try:
            for record in repack:
                for entry in record.entries:
                    if entry.blob_id in used:
                        data = self.repo.load_blob(entry.blob_id)
                        sink.submit(data, entry.blob_type)
                        if self._on_progress is not None:
                            self._on_progress(len(data))
            sink.flush()
        except BaseException:
            sink.abort()
            raise
