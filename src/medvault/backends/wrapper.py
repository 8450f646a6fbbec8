"""A backend around another, as restic wraps its backends: retry (retry.py), the window cache
(windows.py) and the slow store of the tests (delayed.py) each change a verb or two and pass
every other one through, so that no backend carries them as flags of its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from medvault.backends.base import Backend, ObjectInfo


class BackendWrapper(Backend):
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.url = inner.url
        self.local_path = inner.local_path
        self.concurrency = inner.concurrency

    def create(self) -> None:
        self.inner.create()

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def load(
        self, name: str, offset: int = 0, length: int | None = None, *, exact: bool = True
    ) -> bytes:
        return self.inner.load(name, offset, length, exact=exact)

    def store(
        self,
        name: str,
        data: bytes,
        *,
        overwrite: bool = False,
        retain_until: dt.datetime | None = None,
    ) -> None:
        self.inner.store(name, data, overwrite=overwrite, retain_until=retain_until)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    @property
    def lock_enabled(self) -> bool:
        return self.inner.lock_enabled

    @property
    def immutable(self) -> bool:
        return self.inner.immutable

    def retention(self, name: str) -> dt.datetime | None:
        return self.inner.retention(name)

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        self.inner.extend_retention(name, until)

    def set_legal_hold(self, name: str, on: bool) -> None:
        self.inner.set_legal_hold(name, on)

    def legal_hold(self, name: str) -> bool:
        return self.inner.legal_hold(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def close(self) -> None:
        self.inner.close()
