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
    changes: list[Change] = []
    _diff_trees(repo, old.tree, new.tree, b"", changes)
    return changes


def _diff_trees(
    repo: Repository, old: bytes | None, new: bytes | None, prefix: bytes, out: list[Change]
) -> None:
    if old == new:
        return
    before = {n.name: n for n in repo.load_tree(old)} if old else {}
    after = {n.name: n for n in repo.load_tree(new)} if new else {}
    for name in sorted(before.keys() | after.keys()):
        path = prefix + b"/" + name if prefix else name
        shown = "/" + display_path(path)
        a, b = before.get(name), after.get(name)
        if a is None or b is None:
            present = b if a is None else a
            assert present is not None
            out.append(Change(ADDED if a is None else REMOVED, shown))
            if present.type == DIR:
                old_sub, new_sub = (None, present.subtree) if a is None else (present.subtree, None)
                _diff_trees(repo, old_sub, new_sub, path, out)
        elif a.type != b.type:
            out.append(Change(TYPE_CHANGED, shown))
        elif a.type == DIR:
            if _metadata(a) != _metadata(b):
                out.append(Change(METADATA, shown))
            _diff_trees(repo, a.subtree, b.subtree, path, out)
        elif a.content != b.content:
            out.append(Change(MODIFIED, shown))
        elif _metadata(a) != _metadata(b):
            out.append(Change(METADATA, shown))
