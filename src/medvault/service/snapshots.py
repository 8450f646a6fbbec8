"""snapshots, ls and diff: what the repository holds, and what is in a snapshot.

Reads of what patient data there is are runs too, so that the API's listings are audited
like the CLI's: ls and diff name the snapshots they read; a listing of snapshots counts them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.service.selectors import find_snapshot

if TYPE_CHECKING:
    from medvault.repository.browse import Change
    from medvault.repository.records import Node, Snapshot
    from medvault.service.session import Session


@dataclass(frozen=True)
class SnapshotList:
    snapshots: tuple[Snapshot, ...]  # oldest first


@dataclass(frozen=True)
class Entry:
    path: str  # "/" and the path inside the snapshot
    node: Node


@dataclass(frozen=True)
class LsOptions:
    snapshot: str  # id, prefix, latest or latest:SOURCE
    path: str = "/"  # a directory or file inside the snapshot
    recursive: bool = True


@dataclass(frozen=True)
class Listing:
    snapshot: Snapshot
    entries: tuple[Entry, ...]  # in path order; empty when they went to `on_entry`
    count: int


@dataclass(frozen=True)
class Diff:
    old: Snapshot
    new: Snapshot
    changes: tuple[Change, ...]  # in path order

    def count(self, kind: str) -> int:
        """How many changes of one kind: + added, - removed, M content, U metadata, T type."""
        return sum(1 for change in self.changes if change.kind == kind)


def snapshots(session: Session, *, source: str | None = None) -> SnapshotList:
    """The snapshots (of one source), oldest first."""
    with session.run("snapshots", source=source) as run:
        repo = session.open(source)
        run.repository = repo.url
        found = tuple(s for s in repo.list_snapshots() if source is None or s.source == source)
        run.details["snapshots"] = len(found)
        return SnapshotList(found)


def snapshot_doc(snap: Snapshot) -> dict[str, object]:
    """A snapshot as the JSON of `snapshots --json` shows it: its id and stored fields."""
    from medvault.repository.records import snapshot_fields

    return {"id": snap.id, **snapshot_fields(snap), "tree": snap.tree.hex()}


def ls(
    session: Session,
    options: LsOptions,
    *,
    on_entry: Callable[[Entry], None] | None = None,
) -> Listing:
    """The files in a snapshot. With `on_entry`, each entry goes to it as it is read and
    none is kept (a snapshot may hold millions of files): the shell prints as they come."""
    from medvault.repository.browse import list_entries

    with session.run("ls") as run:
        repo = session.open()
        run.repository = repo.url
        snap = find_snapshot(repo, options.snapshot, run)
        run.source = snap.source
        run.touched(snap.id)
        run.details.update(path=options.path, recursive=options.recursive)
        kept: list[Entry] = []
        count = 0
        for path, node in list_entries(repo, snap, options.path, recursive=options.recursive):
            entry = Entry(path, node)
            if on_entry is None:
                kept.append(entry)
            else:
                on_entry(entry)
            count += 1
        run.details["entries"] = count
        return Listing(snap, tuple(kept), count)


def diff(session: Session, *, first: str, second: str) -> Diff:
    """What changed from snapshot `first` to `second` (ids, prefixes or latest[:SOURCE])."""
    from medvault.repository.browse import diff_snapshots

    with session.run("diff") as run:
        repo = session.open()
        run.repository = repo.url
        old, new = find_snapshot(repo, first, run), find_snapshot(repo, second, run)
        if old.source == new.source:
            run.source = old.source
        run.touched(old.id)
        run.touched(new.id)
        result = Diff(old, new, tuple(diff_snapshots(repo, old, new)))
        run.details["changes"] = {kind: result.count(kind) for kind in "+-MUT"}
        return result
