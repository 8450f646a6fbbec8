"""The write pipeline: id -> dedup -> compress -> seal -> verify -> pack -> store.

Worker threads do the CPU work (BLAKE3, zstd and AES-GCM release the GIL); uploader threads
write finished packs, so a slow store never stalls hashing: one for a local disk (fsync is
the cost, and it does not parallelise), REMOTE_UPLOADERS for an object store, where each PUT
mostly waits on the network. Tree blobs go to packs of
their own: losing a data pack then costs the files in it, never the directory listings that
name what was lost. Memory stays bounded:
at most `max_in_flight` bytes of chunks wait for workers, one open pack per worker, and
`upload_queue` finished packs wait for the uploader.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from medvault import faults
from medvault.errors import IntegrityError, MedvaultError
from medvault.repository import compression
from medvault.repository.crypto import storage_id
from medvault.repository.index import PackRecord
from medvault.repository.packs import PackBuilder
from medvault.repository.repo import Repository, pack_name

INDEX_EVERY_PACKS = 32
MAX_OPEN_PACKS = 2
REMOTE_UPLOADERS = 4


@dataclass
class WriteStats:
    blobs_new: int = 0
    bytes_stored: int = 0  # bytes written to packs
    packs: int = 0


class BlobSink:
    def __init__(
        self,
        repo: Repository,
        *,
        workers: int | None = None,
        max_in_flight: int = 64 * 1024 * 1024,
        upload_queue: int = 2,
        verify: bool = True,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.repo = repo
        self.stats = WriteStats()
        self.index_ids: list[str] = []
        self._verify = verify
        self._level = repo.config.compression_level
        self._pack_size = repo.config.pack_size
        self._pool = ThreadPoolExecutor(workers or os.cpu_count() or 2, "medvault-blob")
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._outstanding = 0
        self._cond = threading.Condition()
        self._claimed: set[bytes] = set()
        self._free_builders: dict[int, list[PackBuilder]] = {}
        self._open_packs: dict[int, int] = {}
        uploaders = 1 if repo.backend.local_path else REMOTE_UPLOADERS
        self._uploads: queue.Queue[PackBuilder | None] = queue.Queue(max(upload_queue, uploaders))
        self._unindexed: list[PackRecord] = []
        self._index_lock = threading.Lock()
        self._error: BaseException | None = None
        self._on_progress = on_progress
        self._closed = False
        self._uploaders = [
            threading.Thread(target=self._upload_loop, name=f"medvault-upload-{n}")
            for n in range(uploaders)
        ]
        for thread in self._uploaders:
            thread.start()

    # -- submitting ------------------------------------------------------------------------

    def submit(self, data: bytes, blob_type: int, encoded: bytes | None = None) -> Future[bytes]:
        """Queue a blob; the future yields its id. The blob is durable only after flush().
        `encoded`: the blob as `compression.encode` would make it, known already (a copy
        from another repository, where it was just decoded and verified): not redone."""
        size = len(data)
        with self._cond:
            while self._in_flight and self._in_flight + size > self._max_in_flight:
                self._raise_if_failed()
                self._cond.wait(1.0)
            self._raise_if_failed()
            self._in_flight += size
            self._outstanding += 1
        return self._pool.submit(self._process, data, blob_type, encoded)

    def store(self, data: bytes, blob_type: int) -> bytes:
        return self.submit(data, blob_type).result()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            if isinstance(self._error, MedvaultError):
                raise self._error
            raise MedvaultError(f"writing to the repository failed: {self._error}")

    def _claim(self, blob_id: bytes) -> bool:
        """True when this call is the one to store the blob. Claims are only taken for blobs
        the index lacks, and dropped once their pack is indexed, so the set stays small."""
        if blob_id in self.repo.index and not self._only_condemned(blob_id):
            return False
        with self._cond:
            if blob_id in self._claimed:
                return False
            self._claimed.add(blob_id)
        return True

    def _only_condemned(self, blob_id: bytes) -> bool:
        """Whether the index's copy of the blob lies in a pack a prune will delete."""
        if not self.repo.condemned:
            return False
        location = self.repo.index.lookup(blob_id)
        return location is not None and location.pack_id in self.repo.condemned

    def _process(self, data: bytes, blob_type: int, encoded: bytes | None = None) -> bytes:
        try:
            self._raise_if_failed()
            blob_id = self.repo.blob_id(data)
            if not self._claim(blob_id):
                return blob_id
            payload = encoded if encoded is not None else compression.encode(data, self._level)
            # Decode before write, in two halves: decompression needs no pack, so only the
            # decryption check holds one (fewer open packs serve more workers). A payload
            # handed in was decoded into `data` by the caller already.
            compressed = payload[0] == compression.ZSTD and encoded is None
            if self._verify and compressed and compression.decode(payload, len(data)) != data:
                raise IntegrityError(
                    f"blob {blob_id.hex()[:16]} did not decompress to its input; nothing stored"
                )
            builder = self._take_builder(blob_type)
            try:
                entry = builder.add(blob_id, blob_type, payload, len(data))
                if self._verify and builder.open_added(entry) != payload:
                    raise IntegrityError(
                        f"blob {blob_id.hex()[:16]} did not decrypt to its input; nothing stored"
                    )
            except BaseException:
                self._release_builder(blob_type)
                raise
            with self._cond:
                self.stats.blobs_new += 1
                self.stats.bytes_stored += entry.length
            if builder.size >= self._pack_size:
                self._release_builder(blob_type)
                self._uploads.put(builder)
            else:
                with self._cond:
                    self._free_builders.setdefault(blob_type, []).append(builder)
                    self._cond.notify_all()
            return blob_id
        except BaseException as exc:
            with self._cond:
                self._error = self._error or exc
            raise
        finally:
            with self._cond:
                self._in_flight -= len(data)
                self._outstanding -= 1
                self._cond.notify_all()
            if self._on_progress is not None:
                self._on_progress(len(data))

    def _take_builder(self, blob_type: int) -> PackBuilder:
        """A pack to add to: a free one, or a new one while fewer than MAX_OPEN_PACKS of this
        type exist; otherwise wait. Open packs are the largest buffers here, and one per
        worker would make memory grow with the core count."""
        with self._cond:
            while True:
                free = self._free_builders.get(blob_type)
                if free:
                    return free.pop()
                if self._open_packs.get(blob_type, 0) < MAX_OPEN_PACKS:
                    self._open_packs[blob_type] = self._open_packs.get(blob_type, 0) + 1
                    return PackBuilder(self.repo.master.current)
                self._raise_if_failed()
                self._cond.wait(1.0)

    def _release_builder(self, blob_type: int) -> None:
        """A pack leaves the open set (full and queued for upload, or abandoned)."""
        with self._cond:
            self._open_packs[blob_type] -= 1
            self._cond.notify_all()

    # -- uploading -------------------------------------------------------------------------

    def _upload_loop(self) -> None:
        while True:
            builder = self._uploads.get()
            if builder is None:
                return
            if self._error is not None:
                continue  # drain so that workers never block on a dead uploader
            try:
                self._write_pack(builder)
            except BaseException as exc:
                with self._cond:
                    self._error = self._error or exc
                    self._cond.notify_all()

    def _write_pack(self, builder: PackBuilder) -> None:
        data = builder.finish()
        pack_id = storage_id(data)
        self.repo.store_object(pack_name(pack_id), data)
        faults.point("writer.after-pack")
        record = PackRecord(pack_id, builder.key_block, builder.entries)
        self.repo.index.add_pack(record)
        # Indexed now: the claim is no longer needed to stop a second copy, and keeping it
        # would grow memory with every new chunk of a large backup.
        with self._cond:
            self._claimed.difference_update(e.blob_id for e in builder.entries)
            self.stats.packs += 1
        with self._index_lock:
            self._unindexed.append(record)
            if len(self._unindexed) >= INDEX_EVERY_PACKS:
                self._write_index_locked()
                faults.point("writer.after-index")

    def _write_index(self) -> None:
        with self._index_lock:
            self._write_index_locked()

    def _write_index_locked(self) -> None:
        if self._unindexed:
            self.index_ids.append(self.repo.write_index(self._unindexed))
            self._unindexed = []

    # -- finishing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Store every queued blob, then an index naming every new pack. After this returns,
        a snapshot may refer to any id the sink has handed out."""
        if self._closed:
            return
        with self._cond:
            while self._outstanding:
                self._cond.wait(1.0)
            builders = [b for free in self._free_builders.values() for b in free]
            self._free_builders = {}
        for builder in builders:
            if builder.entries:
                self._uploads.put(builder)
        self._stop_uploaders()
        self._closed = True
        self._pool.shutdown()
        self._raise_if_failed()
        self._write_index()
        faults.point("writer.after-final-index")

    def abort(self) -> None:
        """Stop without writing a final index; packs already stored stay for prune."""
        if self._closed:
            return
        with self._cond:
            self._error = self._error or MedvaultError("aborted")
        self._pool.shutdown(cancel_futures=True)
        self._stop_uploaders()
        self._closed = True

    def _stop_uploaders(self) -> None:
        for _ in self._uploaders:
            self._uploads.put(None)
        for thread in self._uploaders:
            thread.join()


GCM_TAG = 16  # what sealing adds to each blob's payload (PackBuilder.add)


@dataclass
class DryRunStats:
    blobs_new: int = 0
    bytes_new: int = 0  # of new blobs, as read (after deduplication, before compression)
    bytes_stored: int = 0  # what those blobs would take in packs: compressed and sealed


class DryRunSink:
    """BlobSink's verbs without a write: each blob is hashed and looked up as the pipeline
    would, and a new one compressed to count what it would take in a pack. Nothing reaches
    the repository, so a blob new to it is counted once (as the pipeline stores it once)."""

    def __init__(
        self,
        repo: Repository,
        *,
        workers: int | None = None,
        on_progress: Callable[[int], None] | None = None,
        max_in_flight: int = 64 * 1024 * 1024,
    ) -> None:
        self.repo = repo
        self.stats = DryRunStats()
        self._level = repo.config.compression_level
        self._pool = ThreadPoolExecutor(workers or os.cpu_count() or 2, "medvault-dry-run")
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._max_in_flight = max_in_flight
        self._on_progress = on_progress

    def submit(self, data: bytes, blob_type: int, encoded: bytes | None = None) -> Future[bytes]:
        with self._cond:  # memory stays bounded, as in BlobSink
            while self._in_flight and self._in_flight + len(data) > self._max_in_flight:
                self._cond.wait(1.0)
            self._in_flight += len(data)
        return self._pool.submit(self._process, data)

    def _process(self, data: bytes) -> bytes:
        try:
            blob_id = self.repo.blob_id(data)
            location = self.repo.index.lookup(blob_id)
            # A copy only in a pack a prune will delete is stored again, as BlobSink does.
            if location is not None and location.pack_id not in self.repo.condemned:
                return blob_id
            with self._lock:
                if blob_id in self._seen:
                    return blob_id
                self._seen.add(blob_id)
            size = len(compression.encode(data, self._level)) + GCM_TAG
            with self._lock:
                self.stats.blobs_new += 1
                self.stats.bytes_new += len(data)
                self.stats.bytes_stored += size
            return blob_id
        finally:
            with self._cond:
                self._in_flight -= len(data)
                self._cond.notify_all()
            if self._on_progress is not None:
                self._on_progress(len(data))

    def flush(self) -> None:
        self._pool.shutdown()

    def abort(self) -> None:
        self._pool.shutdown(cancel_futures=True)
