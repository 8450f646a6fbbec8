"""Prune: remove the data no snapshot needs, while backups keep running.

Deleting a pack that looks unused is only safe if no backup still in flight refers to it: a
backup may have deduplicated against a blob of a forgotten snapshot, or uploaded a pack it
has not indexed yet. So prune works in two phases:

1. Condemn. Packs none of whose blobs any snapshot needs, and packs mostly unused (their
   used blobs are first written again into new packs), older than a safety margin, are
   listed in a sealed record `prune/condemned/<time>`. Nothing is deleted. From then on
   backups do not deduplicate against condemned packs (they store such blobs anew), so no
   backup that starts after the record can come to depend on them.
2. Delete, once no lock taken before the record is still alive, other than this prune's
   own (every backup that might depend on a condemned pack has ended and, if it succeeded,
   written its snapshot). On a quiet repository that is at once, in the same run; with a
   backup running, a later run does it. Each condemned pack is checked again against the
   snapshots as they are now: it goes only if every blob in it that a snapshot needs has a
   copy in a pack that stays.
   Index objects naming deleted packs are rewritten without them (new index first, then
   the old ones removed), then the packs are deleted, then the record.

Readers (restore, check) still see condemned packs until they are deleted. An interrupted
prune leaves at worst a record whose next run finishes the job, or index objects listing a
pack twice. Packs the store keeps immutable (Object Lock) are never condemned; they are
counted and named in the report.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medvault.errors import IntegrityError, MedvaultError, ObjectLocked, ObjectNotFound
from medvault.repository.locks import LockInfo, list_locks
from medvault.repository.repo import pack_name

if TYPE_CHECKING:
    from medvault.repository.index import PackRecord
    from medvault.repository.repo import Repository

FOLDER = "prune/condemned"
KIND_CONDEMNED = b"prune-condemned"
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
    waiting: list[str] = field(default_factory=list)  # records held back by older locks


@dataclass(frozen=True)
class Condemned:
    name: str
    created: float
    packs: frozenset[str]


def read_condemned(repo: Repository) -> list[Condemned]:
    records = []
    for obj in repo.backend.list(FOLDER):
        try:
            doc = json.loads(repo.load_record(obj.name, KIND_CONDEMNED))
            records.append(Condemned(obj.name, float(doc["time"]), frozenset(doc["packs"])))
        except (IntegrityError, ObjectNotFound, ValueError, KeyError, TypeError):
            repo.warnings.append(f"prune record {obj.name} is unreadable; ignored")
    return sorted(records, key=lambda r: r.created)


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
        *,
        dry_run: bool = False,
        repack_unused: float = 0.5,
        young: dt.timedelta = DEFAULT_YOUNG,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.repo = repo
        self.dry_run = dry_run
        self.repack_unused = repack_unused
        self.young = young
        self.result = PruneResult()
        self._on_progress = on_progress
        # The pack listing condemn made: still true for the delete phase of the same run
        # (only a prune deletes packs, and no other prune runs beside this one).
        self._listing: dict[str, tuple[int, float | None]] | None = None

    def run(self) -> PruneResult:
        if self._other_prune_running():
            raise MedvaultError("another prune is running on this repository; try later")
        self.finish_earlier()
        if self.condemn() and not self.dry_run:
            # Nothing older than the new record may be running: then its packs go now.
            self.finish_earlier()
        return self.result

    @staticmethod
    def _ours(lock: LockInfo) -> bool:
        import os
        import socket

        return (lock.pid, lock.host) == (os.getpid(), socket.gethostname())

    def _other_prune_running(self) -> bool:
        return any(
            lock.purpose == "prune" and not lock.expired and not self._ours(lock)
            for lock in list_locks(self.repo.backend)
        )

    # -- phase 2 ---------------------------------------------------------------------------

    def finish_earlier(self) -> None:
        records = read_condemned(self.repo)
        if not records:
            return
        live = [lock for lock in list_locks(self.repo.backend) if not lock.expired]
        ripe = []
        for record in records:
            older = [
                lock for lock in live if lock.created < record.created and not self._ours(lock)
            ]
            if older:
                self.result.waiting.append(f"{record.name}: waits for {older[0].describe()}")
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
        self._rewrite_indexes(deletable)
        for pack_id in sorted(deletable):
            try:
                self.repo.backend.delete(pack_name(pack_id))
            except ObjectNotFound:
                continue
            except ObjectLocked:
                self.result.kept_locked += 1
        for record in ripe:
            self.repo.backend.delete(record.name)

    def _rewrite_indexes(self, deletable: set[str]) -> None:
        """Each index object naming a deleted pack is replaced by one without it."""
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
            self.repo.backend.delete(f"index/{index_id}")
            self.result.deleted_indexes += 1

    # -- phase 1 ---------------------------------------------------------------------------

    def condemn(self) -> bool:
        """True when a record was written."""
        already = condemned_packs(self.repo)
        used = _used_blobs(self.repo)
        sizes = self._listing = _pack_sizes(self.repo)
        now = time.time()
        records = {record.pack_id: record for record in self.repo.index.packs()}
        doomed: list[str] = []
        repack: list[PackRecord] = []
        for pack_id, (_size, modified) in sorted(sizes.items()):
            if pack_id in already:
                continue
            # A store's clock may run ahead of ours: "young" never means "from the future".
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
        body = json.dumps({"time": now, "packs": packs}).encode()
        # The record first: from here on backups store these packs' blobs anew.
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        self.repo.store_record(
            f"{FOLDER}/{stamp}-{int(now * 1000) % 1000:03d}", body, KIND_CONDEMNED
        )
        self.repo.condemned.update(packs)
        if repack:
            self._repack(repack, used)
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
            if until is not None and until > now:
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
