"""Reading snapshots as directory listings: `ls` and `diff`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from medvault.errors import SnapshotNotFound
from medvault.repository.records import DIR, Node, Snapshot, check_name, display_path
from medvault.repository.repo import Repository

ADDED, REMOVED, MODIFIED, METADATA, TYPE_CHANGED = "+", "-", "M", "U", "T"


@dataclass(frozen=True)
class Change:
    kind: str
    path: str


def _find(repo: Repository, snapshot: Snapshot, path: str) -> tuple[bytes, Node | None]:
    """(path bytes, node) for a path inside a snapshot; node None for the root."""
    parts = [p for p in os.fsencode(path).split(b"/") if p and p != b"."]
    tree: bytes | None = snapshot.tree
    node: Node | None = None
    for part in parts:
        check_name(part)
        found = {n.name: n for n in repo.load_tree(tree)}.get(part) if tree else None
        if found is None:
            raise SnapshotNotFound(f"{path} is not in snapshot {snapshot.short_id}")
        node, tree = found, found.subtree
    return b"/".join(parts), node


def list_entries(
    repo: Repository, snapshot: Snapshot, path: str = "/", *, recursive: bool = True
) -> Iterator[tuple[str, Node]]:
    prefix, node = _find(repo, snapshot, path)
    if node is not None:
        yield "/" + display_path(prefix), node
        if node.subtree is None:
            return
    tree = snapshot.tree if node is None else node.subtree
    assert tree is not None
    if recursive:
        for child, child_node in repo.walk(tree, prefix):
            yield "/" + display_path(child), child_node
    else:
        for child_node in repo.load_tree(tree):
            child = prefix + b"/" + child_node.name if prefix else child_node.name
            yield "/" + display_path(child), child_node


def _metadata(node: Node) -> tuple[object, ...]:
    return (node.mode, node.uid, node.gid, node.mtime_ns, node.target)


def diff_snapshots(repo: Repository, old: Snapshot, new: Snapshot) -> list[Change]:
    """Changes in path order. The trees are compared with an explicit stack (a tree may be
    deeper than the recursion limit); subtrees with equal ids are skipped unread."""
    changes: list[Change] = []
    levels = [_DiffLevel(repo, old.tree, new.tree)] if old.tree != new.tree else []
    names: list[bytes] = []  # the path to the level being compared
    while levels:
        level = levels[-1]
        name = next(level.names, None)
        if name is None:
            levels.pop()
            if levels:
                names.pop()
            continue
        path = b"/".join([*names, name])
        shown = "/" + display_path(path)
        a, b = level.before.get(name), level.after.get(name)
        below: tuple[bytes | None, bytes | None] | None = None
        if a is None or b is None:
            present = b if a is None else a
            assert present is not None
            changes.append(Change(ADDED if a is None else REMOVED, shown))
            if present.type == DIR:
                below = (None, present.subtree) if a is None else (present.subtree, None)
        elif a.type != b.type:
            changes.append(Change(TYPE_CHANGED, shown))
        elif a.type == DIR:
            if _metadata(a) != _metadata(b):
                changes.append(Change(METADATA, shown))
            below = (a.subtree, b.subtree)
        elif a.content != b.content:
            changes.append(Change(MODIFIED, shown))
        elif _metadata(a) != _metadata(b):
            changes.append(Change(METADATA, shown))
        if below is not None and below[0] != below[1]:
            names.append(name)
            levels.append(_DiffLevel(repo, *below))
    return changes


class _DiffLevel:
    """One directory compared: its entries before and after, and the names left to do."""

    def __init__(self, repo: Repository, old: bytes | None, new: bytes | None) -> None:
        self.before = {n.name: n for n in repo.load_tree(old)} if old else {}
        self.after = {n.name: n for n in repo.load_tree(new)} if new else {}
        self.names = iter(sorted(self.before.keys() | self.after.keys()))
