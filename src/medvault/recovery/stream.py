"""Read back the one file of a stream snapshot (see sources/stream.py), in order, with its
blobs fetched and verified in parallel ahead of the reader."""

from __future__ import annotations

import os
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor

from medvault.errors import IntegrityError
from medvault.repository.readahead import ordered_prefetch
from medvault.repository.records import FILE, Node, Snapshot
from medvault.repository.repo import Repository


def stream_node(repo: Repository, snapshot: Snapshot) -> Node:
    """The file node a stream snapshot holds; anything else means the snapshot is damaged."""
    nodes = repo.load_tree(snapshot.tree)
    if len(nodes) != 1 or nodes[0].type != FILE:
        raise IntegrityError(
            f"snapshot {snapshot.short_id} should hold exactly one file and does not"
        )
    return nodes[0]


def iter_stream(repo: Repository, snapshot: Snapshot) -> Generator[bytes, None, None]:
    """The stream's bytes, in order. Closing the iterator early cancels the prefetching."""
    yield from iter_file(repo, snapshot, stream_node(repo, snapshot))


def iter_file(repo: Repository, snapshot: Snapshot, node: Node) -> Generator[bytes, None, None]:
    """One file's bytes, in order (a stream, or one of a snapshot's streams)."""
    workers = max(min(8, os.cpu_count() or 2), repo.concurrency)
    seen = 0
    with ThreadPoolExecutor(workers, "medvault-stream") as pool:
        prefetch = ordered_prefetch(pool, repo.load_blob, node.content, max(16, workers))
        try:
            for data in prefetch:
                seen += len(data)
                yield data
        finally:
            prefetch.close()
    if seen != node.size:
        raise IntegrityError(
            f"snapshot {snapshot.short_id}: stream has {seen} bytes, the snapshot says {node.size}"
        )
