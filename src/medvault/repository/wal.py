"""The WAL archive of one source: one sealed object per file the database archives.

    wal/<source>/<timeline>/<name>   the file's bytes, zstd-compressed and sealed bound to
                                     kind `wal` and this object name, so an object moved to
                                     another name or source fails to open instead of being
                                     replayed
    wal/<source>/cluster             a sealed JSON record (kind `wal-cluster`): which cluster
                                     the archive belongs to

An object is written whole and durably (Backend.store) before `push` returns, and never
overwritten with different content: the first copy of a name is the archive's truth. This
layer knows object names, sealing and durability; what a WAL file means (names, headers,
timelines) is medvault.postgres's business. It never touches the blob index.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from dataclasses import dataclass

import zstandard

from medvault import faults
from medvault.errors import (
    IntegrityError,
    MedvaultError,
    ObjectExists,
    ObjectNotFound,
    UsageError,
    WalConflict,
)
from medvault.repository import compression, deletion
from medvault.repository.crypto import record_aad, seal_object
from medvault.repository.keys import now_iso
from medvault.repository.records import json_object
from medvault.repository.repo import Repository

WAL_ZSTD_LEVEL = 1
ROOT = "wal"
CLUSTER = "cluster"
KIND_WAL = b"wal"
KIND_WAL_CLUSTER = b"wal-cluster"
# The first 8 characters of a name are its timeline in hex (a segment, a .partial or
# .backup file, or NNNNNNNN.history); the rest is checked by the caller.
_NAME = re.compile(r"^([0-9A-F]{8})[0-9A-Za-z.]{0,64}\Z")
_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class ArchivedFile:
    """A file in the archive, as the store holds it."""

    name: str  # the WAL file's own name (000000010000000000000001, 00000002.history, ...)
    size: int  # stored bytes (sealed and compressed)
    archived_at: float | None  # when the store wrote it (seconds since the epoch), if it says


def archived_sources(repo: Repository) -> list[str]:
    """The sources with anything archived under wal/<source>/, sorted."""
    found = set()
    for info in repo.backend.list(ROOT):
        parts = info.name.split("/")
        if len(parts) >= 3 and _SOURCE.match(parts[1]):
            found.add(parts[1])
    return sorted(found)


@dataclass(frozen=True)
class ClusterRecord:
    """The cluster an archive belongs to; WAL of any other cluster is refused."""

    system_identifier: str
    segment_size: int
    created: str


def decode_cluster_record(plaintext: bytes) -> ClusterRecord:
    """The cluster record's JSON, every field checked (a key holder can seal anything)."""
    doc = json_object(plaintext, "the cluster record")
    system_identifier, size, created = (
        doc.get("system_identifier"),
        doc.get("segment_size"),
        doc.get("created"),
    )
    if not isinstance(system_identifier, str) or not re.fullmatch("[0-9]{1,20}", system_identifier):
        raise IntegrityError(f"system identifier {system_identifier!r} is not a number")
    # PostgreSQL's segment sizes: a power of 2, at most 1 GiB (as postgres/walrecords.py reads).
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= 1 << 30:
        raise IntegrityError(f"segment size {size!r} is out of range")
    if size & (size - 1):
        raise IntegrityError(f"segment size {size} is not a power of 2")
    if not isinstance(created, str):
        raise IntegrityError("no creation time")
    return ClusterRecord(system_identifier, size, created)


def timeline_of(name: str) -> int:
    match = _NAME.match(name)
    if match is None:
        raise UsageError(f"{name!r} is not a WAL file name")
    return int(match.group(1), 16)


class WalArchive:
    def __init__(self, repo: Repository, source: str, *, compress_threads: int = -1) -> None:
        """compress_threads: zstd workers per file (-1: one per core, for a lone 16 MiB
        segment; 0 when the caller already pushes several files in parallel)."""
        if not _SOURCE.match(source):
            raise UsageError(f"{source!r} is not a valid source name")
        self.repo = repo
        self.source = source
        self._compress_threads = compress_threads
        # names() also lists what the repository's secondary holds (for recovery, which can
        # fetch from there); off for wal-status and check, which judge the primary alone.
        self.with_secondary = False
        self._local = threading.local()  # a zstd compressor serves one thread at a time

    # -- names -----------------------------------------------------------------------------

    def object_name(self, name: str) -> str:
        return f"{ROOT}/{self.source}/{timeline_of(name):08X}/{name}"

    def _aad(self, name: str) -> bytes:
        return record_aad(KIND_WAL, self.object_name(name))

    # -- files -----------------------------------------------------------------------------

    def _seal(self, name: str, data: bytes) -> bytes:
        # Same payload framing as every other object (flag byte + zstd frame), so the
        # repository's unseal reads it back; level 1 because a push is latency-critical.
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(
                level=WAL_ZSTD_LEVEL, threads=self._compress_threads, write_content_size=True
            )
        packed = compressor.compress(data)
        if len(packed) + 1 < len(data):
            payload = bytes([compression.ZSTD]) + packed
        else:
            payload = bytes([compression.RAW]) + data
        return seal_object(self.repo.master.current, payload, self._aad(name))

    def push(self, name: str, data: bytes) -> bool:
        """Store `name` durably. True when stored now, False when an identical copy was
        there already; WalConflict when a different one is."""
        object_name = self.object_name(name)
        # A re-push (after a crash, or of a file pushed ahead) is common enough to look
        # first rather than compress and encrypt 16 MiB for nothing.
        if not self.repo.backend.exists(object_name):
            try:
                self.repo.store_object(object_name, self._seal(name, data))
                faults.point("wal.after-store")
                return True
            except ObjectExists:
                pass  # another push of it won the race: compare with that one
        try:
            stored = self._fetch_here(name)
        except IntegrityError as exc:
            # A copy that fails authentication archives nothing: the bytes in hand replace it.
            deletion.replace_damaged(self.repo, object_name, self._seal(name, data))
            self.repo.warnings.append(f"the archived copy of {name} was damaged ({exc}); replaced")
            return True
        if stored is None:  # removed between the two calls: store it again
            self.repo.store_object(object_name, self._seal(name, data))
            return True
        if stored == data:
            return False
        raise WalConflict(
            f"{name} is archived already for source {self.source} with different content; "
            "refusing to overwrite it. Another cluster may be archiving to this source, or this "
            "cluster was restored over an older archive: give each cluster its own source "
            "name, and keep the existing archive while backups need it"
        )

    def fetch(self, name: str) -> bytes | None:
        """The file's bytes; None when it is not archived; IntegrityError when damaged.
        Where the primary lacks it or holds it damaged, the repository's secondary (if any)
        is asked, and the event recorded."""
        try:
            data = self._fetch_here(name)
        except IntegrityError as exc:
            found = self._fetch_from_secondary(name, str(exc))
            if found is None:
                raise
            return found
        if data is None:
            return self._fetch_from_secondary(name, "missing")
        return data

    def _fetch_from_secondary(self, name: str, reason: str) -> bytes | None:
        if self.repo.fallback is None:
            return None
        other = self.repo.secondary()
        if other is None:
            return None
        try:
            data = WalArchive(other, self.source)._fetch_here(name)
        except MedvaultError:
            return None
        if data is not None:
            self.repo.record_failover(f"WAL {name}", reason)
        return data

    def _fetch_here(self, name: str) -> bytes | None:
        try:
            data = self.repo.backend.load(self.object_name(name))
        except ObjectNotFound:
            return None
        try:
            return self.repo.open_record(self.object_name(name), data, KIND_WAL)
        except IntegrityError as exc:
            raise IntegrityError(
                f"the archived {name} of source {self.source} is damaged ({exc}); "
                "push it again from its cluster if it still has it, and run `medvault check`"
            ) from exc

    def exists(self, name: str) -> bool:
        return self.repo.backend.exists(self.object_name(name))

    def files(self, timeline: int | None = None) -> list[ArchivedFile]:
        """The files this repository holds (never its secondary's), in no particular order;
        of one timeline when given."""
        prefix = f"{ROOT}/{self.source}"
        if timeline is not None:
            prefix += f"/{timeline:08X}"
        found = []
        for info in self.repo.backend.list(prefix):
            parts = info.name.split("/")
            # The folder is the name's own timeline, as object_name writes it; anything else
            # under wal/<source>/ (planted, or a name this medvault does not know) is not WAL.
            if len(parts) == 4 and _NAME.match(parts[3]) and parts[2] == parts[3][:8]:
                found.append(ArchivedFile(parts[3], info.size, info.modified))
        return found

    def delete(self, name: str) -> None:
        """Remove an archived file (WAL retention decides which: repository/deletion.py).
        ObjectNotFound when absent, ObjectLocked when the store keeps it."""
        deletion.wal_object(self.repo, self.object_name(name))

    def names(self, timeline: int | None = None) -> list[str]:
        """Archived file names, sorted; of one timeline when given."""
        found = [archived.name for archived in self.files(timeline)]
        if self.with_secondary and self.repo.fallback is not None:
            other = self.repo.secondary()
            if other is not None:
                with contextlib.suppress(MedvaultError):
                    found.extend(WalArchive(other, self.source).names(timeline))
        return sorted(set(found))

    def archived_at(self, name: str) -> float | None:
        """When the store wrote `name` (seconds since the epoch); None when absent or the
        store does not say."""
        prefix = f"{ROOT}/{self.source}/{timeline_of(name):08X}"
        wanted = f"{prefix}/{name}"
        return next((i.modified for i in self.repo.backend.list(prefix) if i.name == wanted), None)

    # -- the cluster record ----------------------------------------------------------------

    def cluster(self) -> ClusterRecord | None:
        name = f"{ROOT}/{self.source}/{CLUSTER}"
        try:
            data = self.repo.backend.load(name)
        except ObjectNotFound:
            return None
        try:
            return decode_cluster_record(self.repo.open_record(name, data, KIND_WAL_CLUSTER))
        except IntegrityError as exc:
            raise IntegrityError(
                f"the WAL archive's cluster record {name} is damaged ({exc}); run `medvault check`"
            ) from exc

    def record_cluster(self, system_identifier: str, segment_size: int) -> ClusterRecord:
        """Claim the archive for a cluster; the first claim wins and is returned to all."""
        record = ClusterRecord(system_identifier, segment_size, now_iso())
        body = json.dumps(
            {
                "system_identifier": record.system_identifier,
                "segment_size": record.segment_size,
                "created": record.created,
            }
        ).encode()
        try:
            self.repo.store_record(f"{ROOT}/{self.source}/{CLUSTER}", body, KIND_WAL_CLUSTER)
        except ObjectExists:
            held = self.cluster()
            if held is None:
                raise IntegrityError(
                    f"the WAL archive's cluster record of {self.source} vanished"
                ) from None
            return held
        return record

    def system_identifier(self) -> str | None:
        record = self.cluster()
        return None if record is None else record.system_identifier
