"""Keeping a locked snapshot's data locked as long as the snapshot, and a held one's for as
long as its hold.

On a store with Object Lock every object is written with a retain-until date (now plus its
tier's floor). Deduplication breaks the simple picture: a snapshot taken today may reuse a
pack written years ago, whose lock runs out long before today's snapshot may be deleted.
So before a snapshot is saved, every pack holding one of its blobs, and every index object
naming such a pack, has its retention extended to at least the snapshot's own. Retention
only ever grows (COMPLIANCE mode refuses to shorten it), so a date this process has seen or
set is a safe lower bound and spares a request.

A legal hold (policy/holds.py) has no date: the same objects, plus the snapshot object and
the hold record, carry an Object Lock legal hold until the hold is released.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from medvault.errors import IntegrityError, ObjectNotFound

if TYPE_CHECKING:
    from medvault.repository.repo import Repository

# Extend a little beyond what is needed, so that the next few backups reusing the same packs
# find them locked long enough already and send no request.
SLACK_MAX = dt.timedelta(days=30)


def slack(period: dt.timedelta) -> dt.timedelta:
    return min(period / 10, SLACK_MAX)


def needed_objects(repo: Repository, tree: bytes) -> set[str]:
    """Names of the packs and index objects the snapshot rooted at `tree` cannot do without."""
    from medvault.repository.repo import pack_name

    packs: set[str] = set()
    for blob in repo.referenced_blobs(tree):
        location = repo.index.lookup(blob)
        if location is None:
            raise IntegrityError(f"blob {blob.hex()[:16]} of the new snapshot is not indexed")
        packs.add(location.pack_id)
    names = {pack_name(pack) for pack in packs}
    for pack in packs:
        names.update(f"index/{index_id}" for index_id in repo.pack_indexes.get(pack, ()))
    return names


def protect(repo: Repository, tree: bytes, until: dt.datetime, target: dt.datetime) -> int:
    """Every needed object whose retention ends before `until` is extended to `target`.
    Returns how many objects were extended."""
    backend = repo.backend

    def ensure(name: str) -> bool:
        known = repo.retained.get(name)
        if known is not None and known >= until:
            return False
        current = backend.retention(name)
        if current is not None and current >= until:
            repo.retained[name] = current
            return False
        backend.extend_retention(name, target)
        repo.retained[name] = target
        return True

    names = sorted(needed_objects(repo, tree))
    with ThreadPoolExecutor(max(1, backend.concurrency), "medvault-lock") as pool:
        return sum(pool.map(ensure, names))


def set_legal_holds(repo: Repository, names: set[str], on: bool) -> None:
    """Place or lift the store's legal hold on every object in `names`; objects already gone
    need no lifting."""
    backend = repo.backend

    def apply(name: str) -> None:
        try:
            backend.set_legal_hold(name, on)
        except ObjectNotFound:
            if on:
                raise

    with ThreadPoolExecutor(max(1, backend.concurrency), "medvault-hold") as pool:
        list(pool.map(apply, sorted(names)))
