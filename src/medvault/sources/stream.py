"""A byte stream (pg_dump output, a Redis RDB file) stored as a snapshot holding one file;
or several streams (one CSV per table) as the files of one snapshot.

The stream is read straight from its producer (usually a pipe), chunked and written like any
file: nothing touches the local disk. The snapshot is saved last, and only when the caller's
`before_save` says the producer succeeded: a dump cut short by an error never looks complete.
"""

from __future__ import annotations

import os
import pwd
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from medvault import __version__
from medvault.repository.chunker import Chunker, ReadsInto
from medvault.repository.keys import now_iso
from medvault.repository.packs import DATA_BLOB, TREE_BLOB
from medvault.repository.records import FILE, Node, Snapshot, check_name, encode_tree
from medvault.repository.repo import Repository
from medvault.repository.writer import BlobSink, DryRunSink

STREAM_FILE_MODE = 0o600
SMALL_READ = 128 * 1024
NAP_S = 0.001


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


@dataclass
class StreamResult:
    snapshot: Snapshot
    bytes_read: int
    bytes_added: int
    duration: float


@dataclass
class StreamDryRun:
    """What backup_streams would store, from a run that chunked everything and wrote nothing."""

    files: int
    bytes_read: int
    blobs_new: int
    bytes_new: int  # new to the repository after deduplication, before compression
    bytes_added: int  # what the new blobs would take in packs: compressed and sealed
    duration: float


# Runs once the streams ended: checks their producer and returns the facts to record.
Finisher = Callable[[], dict[str, Any]]


class FillingReader:
    """Fills the caller's buffer completely (or up to end of stream) from a pipe.

    A pipe returns at most its buffer (64 KiB - 1 MiB) per read; the chunker cuts whatever one
    read returns and carries the unfinished last chunk over, so tiny reads would make it
    re-scan each ~1 MiB chunk many times. Reading whole blocks keeps chunking linear.
    A producer writing through stdio (pg_dump) sends 4-8 KiB per write: after a small read
    the reader naps a millisecond and lets the pipe fill, instead of waking per write (20x
    fewer context switches, half the reading CPU; the pipe holds more than a nap's worth).
    """

    def __init__(self, stream: ReadsInto) -> None:
        self._stream = stream

    def readinto(self, buffer: memoryview, /) -> int:
        filled = 0
        size = len(buffer)
        while filled < size:
            got = self._stream.readinto(buffer[filled:])
            if not got:
                break
            filled += got
            if got < SMALL_READ and filled < size:
                time.sleep(NAP_S)
        return filled


def backup_stream(
    repo: Repository,
    stream: ReadsInto,
    *,
    source: str,
    kind: str,
    filename: bytes,
    facts: dict[str, Any],
    tags: tuple[str, ...] = (),
    tier: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    before_save: Callable[[], dict[str, Any]] | None = None,
) -> StreamResult:
    """Store everything `stream` yields until its end as the one file `filename`.

    `before_save` runs after the stream ended and before anything makes the data reachable:
    it checks the producer (exit status) and returns facts to add; if it raises, the sink is
    aborted and no snapshot is written (packs already stored stay for prune).
    """
    return backup_streams(
        repo,
        iter([(filename, stream)]),
        source=source,
        kind=kind,
        facts=facts,
        tags=tags,
        tier=tier,
        on_progress=on_progress,
        before_save=before_save,
    )


def backup_streams(
    repo: Repository,
    streams: Iterator[tuple[bytes, ReadsInto]],
    *,
    source: str,
    kind: str,
    facts: dict[str, Any],
    tags: tuple[str, ...] = (),
    tier: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    before_save: Callable[[], dict[str, Any]] | None = None,
) -> StreamResult:
    """Store several streams, one after the other, as the files of one snapshot (its tree
    one flat directory). `streams` yields each file's name and stream when it is wanted, so
    a producer may start the next stream only once the previous one ended."""
    started = time.monotonic()
    start_time = now_iso()
    with repo.lock(exclusive=False, purpose=f"backup of {source}") as lock:
        repo.index  # noqa: B018 - load it once here, before worker threads need it
        sink = BlobSink(repo, on_progress=on_progress)
        nodes, tree_id, extra = _store_all(repo, sink, streams, before_save)
        total = sum(n.size for n in nodes)
        duration = time.monotonic() - started
        snapshot = Snapshot(
            time=start_time,
            end_time=now_iso(),
            host=socket.gethostname(),
            user=_user_name(),
            source=source,
            kind=kind,
            backup_type="full",
            paths=tuple(n.name.decode("utf-8", "backslashreplace") for n in nodes),
            tree=tree_id,
            tags=tags,
            tier=tier,
            stats={
                "total_bytes": total,
                "bytes_read": total,
                "bytes_added": sink.stats.bytes_stored,
                "blobs_added": sink.stats.blobs_new,
                "duration_s": round(duration, 3),
            },
            facts={**facts, **extra},
            program=f"medvault {__version__}",
        )
        snapshot_id = repo.save_snapshot(snapshot, lock)
    return StreamResult(
        snapshot=replace(snapshot, id=snapshot_id),
        bytes_read=total,
        bytes_added=sink.stats.bytes_stored,
        duration=duration,
    )


def dry_run_streams(
    repo: Repository,
    streams: Iterator[tuple[bytes, ReadsInto]],
    *,
    source: str,
    on_progress: Callable[[int], None] | None = None,
    before_save: Finisher | None = None,
) -> StreamDryRun:
    """Read and chunk the streams as backup_streams does, each blob looked up in the index and
    counted, and store nothing: no pack, index or snapshot (a shared lock is held while
    reading). `before_save` still checks the producer, so a failed dump fails the dry run."""
    started = time.monotonic()
    with repo.lock(exclusive=False, purpose=f"dry run of a backup of {source}"):
        repo.index  # noqa: B018 - load it once here, before worker threads need it
        sink = DryRunSink(repo, on_progress=on_progress)
        nodes, _tree_id, _extra = _store_all(repo, sink, streams, before_save)
    return StreamDryRun(
        files=len(nodes),
        bytes_read=sum(n.size for n in nodes),
        blobs_new=sink.stats.blobs_new,
        bytes_new=sink.stats.bytes_new,
        bytes_added=sink.stats.bytes_stored,
        duration=time.monotonic() - started,
    )


def _store_all(
    repo: Repository,
    sink: BlobSink | DryRunSink,
    streams: Iterator[tuple[bytes, ReadsInto]],
    before_save: Finisher | None,
) -> tuple[list[Node], bytes, dict[str, Any]]:
    """Chunk every stream into `sink`, then its tree; check the producer, then flush."""
    chunker = Chunker(repo.config.chunker, repo.master.chunker_seed)
    try:
        nodes: list[Node] = []
        for filename, stream in streams:
            check_name(filename)
            nodes.append(_store_file(chunker, sink, filename, stream))
        tree_id = sink.submit(encode_tree(nodes), TREE_BLOB).result()
        extra = before_save() if before_save is not None else {}
        sink.flush()
    except BaseException:
        sink.abort()
        raise
    return nodes, tree_id, extra


def _store_file(
    chunker: Chunker, sink: BlobSink | DryRunSink, filename: bytes, stream: ReadsInto
) -> Node:
    futures: list[Future[bytes]] = []
    size = 0
    for chunk in chunker.chunks(FillingReader(stream)):
        size += len(chunk)
        futures.append(sink.submit(chunk, DATA_BLOB))
    now_ns = time.time_ns()
    return Node(
        name=filename,
        type=FILE,
        mode=STREAM_FILE_MODE,
        uid=os.getuid(),
        gid=os.getgid(),
        mtime_ns=now_ns,
        ctime_ns=now_ns,
        size=size,
        content=tuple(f.result() for f in futures),
    )
