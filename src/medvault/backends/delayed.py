"""A backend wrapper that makes every request slow, as a distant or overloaded store is, so
that tests can widen the windows in which concurrent commands interleave."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

from medvault.backends.base import Backend, ObjectInfo
from medvault.backends.wrapper import BackendWrapper


class DelayedBackend(BackendWrapper):
    def __init__(self, inner: Backend, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay

    def _wait(self) -> None:
        time.sleep(self.delay)

    def create(self) -> None:
        self._wait()
        super().create()

    def exists(self, name: str) -> bool:
        self._wait()
        return super().exists(name)

    def load(
        self, name: str, offset: int = 0, length: int | None = None, *, exact: bool = True
    ) -> bytes:
        self._wait()
        return super().load(name, offset, length, exact=exact)

    def store(
        self,
        name: str,
        data: bytes,
        *,
        overwrite: bool = False,
        retain_until: dt.datetime | None = None,
    ) -> None:
        self._wait()
        super().store(name, data, overwrite=overwrite, retain_until=retain_until)

    def delete(self, name: str) -> None:
        self._wait()
        super().delete(name)

    def retention(self, name: str) -> dt.datetime | None:
        self._wait()
        return super().retention(name)

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        self._wait()
        super().extend_retention(name, until)

    def set_legal_hold(self, name: str, on: bool) -> None:
        self._wait()
        super().set_legal_hold(name, on)

    def legal_hold(self, name: str) -> bool:
        self._wait()
        return super().legal_hold(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._wait()
        yield from super().list(prefix)
