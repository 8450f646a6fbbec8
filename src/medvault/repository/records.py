"""Format records (trees, snapshots) and their one serialization: MessagePack maps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import msgpack

from medvault.errors import IntegrityError, UnsafeSnapshot

FILE, DIR, SYMLINK = "file", "dir", "symlink"
# Operational records (docs/format.md §18) kept by the layers above, named here so that
# `check` can verify them: their folder and the kind each is sealed with, with its name.
HOLDS, KIND_HOLD = "holds", b"hold"
DRILLS, KIND_DRILL = "drills", b"drill"
NODE_TYPES = {FILE, DIR, SYMLINK, "fifo", "socket", "chardev", "blockdev"}


@dataclass(frozen=True)
class Node:
    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    dev: int = 0
    size: int = 0
    content: tuple[bytes, ...] = ()
    subtree: bytes | None = None
    target: bytes = b""

    def same_file(self, other: Node) -> bool:
        """The incremental shortcut: unchanged if size, mtime, ctime and inode all match."""
        return (
            self.type == other.type == FILE
            and self.size == other.size
            and self.mtime_ns == other.mtime_ns
            and self.ctime_ns == other.ctime_ns
            and self.inode == other.inode
        )

    def with_content(self, content: tuple[bytes, ...]) -> Node:
        return replace(self, content=content)


_NODE_KEYS = {
    "name": "n",
    "type": "t",
    "mode": "m",
    "uid": "u",
    "gid": "g",
    "user": "U",
    "group": "G",
    "mtime_ns": "mt",
    "ctime_ns": "ct",
    "inode": "i",
    "dev": "d",
    "size": "s",
    "content": "c",
    "subtree": "st",
    "target": "l",
}
_NODE_FIELDS = {short: long for long, short in _NODE_KEYS.items()}


def display_path(path: bytes) -> str:
    """A path for humans: invalid UTF-8 shown as escapes, never as a crash."""
    return path.decode("utf-8", "backslashreplace")


def check_name(name: bytes) -> None:
    """A tree entry name is one path component; anything else could escape a restore target."""
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafeSnapshot(f"snapshot holds an unsafe file name {name!r}; refusing to use it")


def encode_tree(nodes: list[Node]) -> bytes:
    out = []
    for node in sorted(nodes, key=lambda n: n.name):
        doc: dict[str, Any] = {"n": node.name, "t": node.type}
        for long, short in _NODE_KEYS.items():
            if long in ("name", "type"):
                continue
            value = getattr(node, long)
            if value or (long == "subtree" and value is not None):
                doc[short] = list(value) if long == "content" else value
        out.append(doc)
    return msgpack.packb({"v": 1, "nodes": out})


def decode_tree(raw: bytes) -> list[Node]:
    try:
        doc = msgpack.unpackb(raw)
        if doc.get("v") != 1:
            raise IntegrityError(f"tree has unknown version {doc.get('v')}")
        nodes = []
        for item in doc["nodes"]:
            fields = {_NODE_FIELDS[k]: v for k, v in item.items()}
            if "content" in fields:
                fields["content"] = tuple(fields["content"])
            nodes.append(Node(**fields))
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
        raise IntegrityError("tree is malformed") from exc
    seen: set[bytes] = set()
    for node in nodes:
        check_name(node.name)
        if node.name in seen:
            raise UnsafeSnapshot(f"snapshot lists {node.name!r} twice in one directory")
        if node.type not in NODE_TYPES:
            raise IntegrityError(f"tree entry {node.name!r} has unknown type {node.type!r}")
        if (node.type == DIR) != (node.subtree is not None):
            raise IntegrityError(f"tree entry {node.name!r} is inconsistent")
        seen.add(node.name)
    return nodes


@dataclass(frozen=True)
class Snapshot:
    time: str
    end_time: str
    host: str
    user: str
    source: str
    kind: str
    backup_type: str
    paths: tuple[str, ...]
    tree: bytes
    tags: tuple[str, ...] = ()
    parent: str | None = None
    tier: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    program: str = ""
    origin: str | None = None  # "<repository id>:<snapshot id>" of the snapshot this copies
    id: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def taken(self) -> datetime:
        """`time` as an aware UTC datetime."""
        return datetime.fromisoformat(self.time.replace("Z", "+00:00"))


def snapshot_fields(snap: Snapshot) -> dict[str, Any]:
    """The stored fields of a snapshot, by their names in the format."""
    return {
        "time": snap.time,
        "end_time": snap.end_time,
        "host": snap.host,
        "user": snap.user,
        "source": snap.source,
        "kind": snap.kind,
        "type": snap.backup_type,
        "paths": list(snap.paths),
        "tree": snap.tree,
        "tags": list(snap.tags),
        "parent": snap.parent,
        "tier": snap.tier,
        "stats": snap.stats,
        "facts": snap.facts,
        "program": snap.program,
        "origin": snap.origin,
    }


def encode_snapshot(snap: Snapshot) -> bytes:
    return msgpack.packb({"v": 1, **snapshot_fields(snap)})


def decode_snapshot(raw: bytes, snapshot_id: str) -> Snapshot:
    try:
        doc = msgpack.unpackb(raw)
        if doc.get("v") != 1:
            raise IntegrityError(f"snapshot {snapshot_id[:12]} has unknown version {doc.get('v')}")
        return Snapshot(
            time=doc["time"],
            end_time=doc["end_time"],
            host=doc["host"],
            user=doc["user"],
            source=doc["source"],
            kind=doc["kind"],
            backup_type=doc["type"],
            paths=tuple(doc["paths"]),
            tree=doc["tree"],
            tags=tuple(doc["tags"]),
            parent=doc["parent"],
            tier=doc["tier"],
            stats=doc["stats"],
            facts=doc["facts"],
            program=doc["program"],
            origin=doc.get("origin"),
            id=snapshot_id,
        )
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"snapshot {snapshot_id[:12]} is malformed") from exc
