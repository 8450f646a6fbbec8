"""Reading blobs ahead of their consumer: many fetches in flight on a thread pool, results
handed over in order (restores, stream reads and copies all read a file's blobs this way)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

PREFETCH_BLOBS = 16
Fetched = TypeVar("Fetched")


def ordered_prefetch(
    pool: ThreadPoolExecutor,
    fetch: Callable[[bytes], Fetched],
    blob_ids: Iterable[bytes],
    ahead: int = PREFETCH_BLOBS,
) -> Generator[Fetched, None, None]:
    """fetch() over blob_ids on the pool, results in order, at most `ahead` blobs ahead."""
    window: deque[Future[Fetched]] = deque()
    try:
        for blob_id in blob_ids:
            window.append(pool.submit(fetch, blob_id))
            if len(window) >= ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for future in window:
            future.cancel()
