"""The Backend protocol: a flat store of immutable named objects.

Names are relative, '/'-separated, ASCII, without '.' or '..' components; they are checked
here once, not by every backend. Nothing above this layer sees paths or buckets.
"""

from __future__ import annotations

import datetime as dt
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from medvault.errors import BackendError, NotSupported

_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def is_object_name(name: str) -> bool:
    return bool(name) and all(_NAME_PART.match(p) for p in name.split("/"))


def validate_name(name: str) -> str:
    if not is_object_name(name):
        raise BackendError(f"invalid object name {name!r}")
    return name


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    modified: float | None = None  # when the store wrote it (seconds since the epoch)


class Backend(ABC):
    """Objects are written whole and durably, or not at all; readers never see partial ones."""

    url: str
    local_path: str | None = None  # where the objects live when that is this file system
    # How many requests are worth having in flight at once: a disk wants few, a remote
    # object store many (each request waits on the network).
    concurrency: int = 2

    @abstractmethod
    def create(self) -> None:
        """Prepare an empty store; fails with RepositoryExists when one is already there."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def load(
        self, name: str, offset: int = 0, length: int | None = None, *, exact: bool = True
    ) -> bytes:
        """Read an object, or `length` bytes of it from `offset`. ObjectNotFound if absent.
        With exact=False a range running past the end returns what is there."""

    @abstractmethod
    def store(
        self,
        name: str,
        data: bytes,
        *,
        overwrite: bool = False,
        retain_until: dt.datetime | None = None,
    ) -> None:
        """Write an object durably before returning. ObjectExists unless `overwrite`;
        ObjectLocked when overwriting an immutable object. `retain_until` locks the object
        against deletion until then (S3 Object Lock; NotSupported on a store without it;
        ignored for locks/, which are never locked)."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove an object; ObjectLocked when it is immutable (locked or append-only)."""

    @property
    def lock_enabled(self) -> bool:
        """Whether objects can carry a retain-until date that the store enforces."""
        return False

    @property
    def immutable(self) -> bool:
        """Whether this store refuses deletes of backup objects (locks aside) at all."""
        return False

    def retention(self, name: str) -> dt.datetime | None:
        """The date until which `name` cannot be deleted, if any."""
        return None

    def extend_retention(self, name: str, until: dt.datetime) -> None:
        """Lock `name` until at least `until`. Only on stores with lock_enabled;
        NotSupported elsewhere."""
        raise NotSupported(self._no_object_lock())

    def set_legal_hold(self, name: str, on: bool) -> None:
        """Place (on) or lift (off) a legal hold on `name`: while it is on, the store itself
        refuses to delete the object, whatever its retention date. Only on stores with
        lock_enabled; NotSupported elsewhere."""
        raise NotSupported(self._no_legal_holds())

    def legal_hold(self, name: str) -> bool:
        """Whether `name` is under a legal hold; NotSupported where the store has none."""
        raise NotSupported(self._no_legal_holds())

    def _no_legal_holds(self) -> str:
        return (
            f"{self.url} cannot place legal holds: that needs an S3 bucket created with "
            "Object Lock enabled"
        )

    def _no_object_lock(self) -> str:
        return (
            f"{self.url} cannot lock objects until a date: that needs an S3 bucket created "
            "with Object Lock enabled"
        )

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose name starts with `prefix` + '/', in no particular order."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release cached handles."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
