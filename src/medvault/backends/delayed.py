"""A backend wrapper that makes every request slow, as a distant or overloaded store is, so
that tests can widen the windows in which concurrent commands interleave."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

from medvault.backends.base import Backend, ObjectInfo


class DelayedBackend(Backend):
    def __init__(self, inner: Backend, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.url = inner.url
        self.local_path = inner.local_path
        self.concurrency = inner.concurrency

    def _wait(self) -> None:
        time.sleep(self.delay)

    def create(self) -> None:
        self._wait()
        self.inner.create()

    def exists(self, name: str) -> bool:
        self._wait()
        return self.inner.exists(name)

    def load(
        self, name: str, offset: int = 0, length: int | None = None, *, exact: bool = True
    ) -> bytes:
        self._wait()
        return self.inner.load(name, offset, length, exact=exact)

    def store(
        self,
        name: str,
        data: bytes,
        *,
        overwrite: bool = False,
        retain_until: dt.datetime | None = None,
    ) -> None:
        self._wait()
        self.inner.store(name, data, overwrite=overwrite, retain_until=retain_until)

    def delete(self, name: str) -> None:
        self._wait()
        self.inner.delete(name)

    @property
    def lock_enabled(self) -> bool:
        return self.inner.lock_enabled

    @property
    def immutable(self) -> bool:
        return self.inner.immutable

    def retention(self, name: str) -> dt.datetime | None:
        self._wait()
        return self.inner.retention(name)

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        self._wait()
        self.inner.extend_retention(name, until)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._wait()
        yield from self.inner.list(prefix)

    def close(self) -> None:
        self.inner.close()
