"""Asking the store again after a failure that asking again may cure.

botocore retries an S3 request, with backoff, until its answer begins (throttling, 5xx,
timeouts, a lost connection: backends/s3.py configures it). What it cannot retry is an answer
cut short after it began: a connection reset halfway through a body, a proxy's timeout.
S3Backend reports that as TransientBackendError, and this wrapper asks again.

Only reads are asked again (load, exists, retention, legal_hold), because asking twice
changes nothing. A store or a delete whose answer was lost may have been carried out, and
asking again would report our own write as ObjectExists or our own delete as ObjectNotFound.
The one such case that matters, a conditional PUT retried by botocore that then finds the
object its first attempt wrote, stays inside S3Backend: only it can see that botocore
retried (the answer's RetryAttempts), and so tell its own object from another writer's. A
listing is not asked again either: it yields as it goes, and starting over would repeat names.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import TypeVar

from medvault.backends.base import Backend
from medvault.backends.wrapper import BackendWrapper
from medvault.errors import TransientBackendError

ATTEMPTS = 4
PAUSE = 0.2  # seconds before the second attempt; the n-th waits n times as long

T = TypeVar("T")


class RetryingBackend(BackendWrapper):
    def __init__(self, inner: Backend, attempts: int = ATTEMPTS, pause: float = PAUSE) -> None:
        super().__init__(inner)
        self.attempts = attempts
        self.pause = pause

    def _again(self, request: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts):
            try:
                return request()
            except TransientBackendError:
                time.sleep(self.pause * attempt)
        return request()  # the last attempt's error is the one reported

    def load(
        self, name: str, offset: int = 0, length: int | None = None, *, exact: bool = True
    ) -> bytes:
        return self._again(lambda: self.inner.load(name, offset, length, exact=exact))

    def exists(self, name: str) -> bool:
        return self._again(lambda: self.inner.exists(name))

    def retention(self, name: str) -> dt.datetime | None:
        return self._again(lambda: self.inner.retention(name))

    def legal_hold(self, name: str) -> bool:
        return self._again(lambda: self.inner.legal_hold(name))
