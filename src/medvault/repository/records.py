"""Format records (trees, snapshots) and their one serialization: MessagePack maps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import msgpack

from medvault.errors import IntegrityError, UnsafeSnapshot

FILE, DIR, SYMLINK = "file", "dir", "symlink"
# Operational records (docs/format.md §18) kept by the layers above, named here so that
# `check` can verify them: their folder and the kind each is sealed with, with its name.
HOLDS, KIND_HOLD = "holds", b"hold"
DRILLS, KIND_DRILL = "drills", b"drill"
NODE_TYPES = {FILE, DIR, SYMLINK, "fifo", "socket", "chardev", "blockdev"}


def json_object(plaintext: bytes, what: str) -> dict[str, Any]:
    """The JSON object a sealed record holds. Sealing proves only that a key holder wrote it,
    so anything else (not JSON, nested past the parser's depth, a list) is an IntegrityError
    naming `what`; its fields are for the caller to check."""
    try:
        doc = json.loads(plaintext)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{what} is not JSON") from exc
    if not isinstance(doc, dict):
        raise IntegrityError(f"{what} is not a JSON object")
    return doc


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


# What each stored tree field may hold. A tree is authenticated, but anyone holding the key
# (a compromised client) can write any tree: every field is checked before restore uses it.
# Integers are bounded by what MessagePack can carry and the system calls that apply them.
_NODE_INTS = {
    "mode": (0, 0o7777),
    "uid": (0, 2**32 - 1),
    "gid": (0, 2**32 - 1),
    "mtime_ns": (-(2**63), 2**64 - 1),
    "ctime_ns": (-(2**63), 2**64 - 1),
    "inode": (0, 2**64 - 1),
    "dev": (0, 2**64 - 1),
    "size": (0, 2**64 - 1),
}
BLOB_ID_LEN = 32


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_blob_id(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == BLOB_ID_LEN


def _node_field(name: str, value: Any) -> Any:
    """The field's value as Node holds it, or None when the value is not acceptable."""
    if name in _NODE_INTS:
        low, high = _NODE_INTS[name]
        return value if _is_int(value) and low <= value <= high else None
    if name in ("name", "target"):
        return value if isinstance(value, bytes) else None
    if name in ("type", "user", "group"):
        return value if isinstance(value, str) else None
    if name == "subtree":
        return value if _is_blob_id(value) else None
    # content
    if isinstance(value, list) and all(_is_blob_id(c) for c in value):
        return tuple(value)
    return None


def _decode_node(item: Any) -> Node:
    if not isinstance(item, dict) or not isinstance(item.get("n"), bytes):
        raise IntegrityError("tree is malformed: an entry without a name")
    name = item["n"]
    fields = {}
    for key, value in item.items():
        field_name = _NODE_FIELDS.get(key) if isinstance(key, str) else None
        if field_name is None:
            raise IntegrityError(f"tree entry {name!r} has an unknown field {key!r}")
        fields[field_name] = _node_field(field_name, value)
        if fields[field_name] is None:
            raise IntegrityError(f"tree entry {name!r} has a malformed {field_name}")
    if "type" not in fields:
        raise IntegrityError(f"tree entry {name!r} has no type")
    return Node(**fields)


def decode_tree(raw: bytes) -> list[Node]:
    try:
        doc = msgpack.unpackb(raw)
    except (ValueError, msgpack.UnpackException) as exc:
        raise IntegrityError("tree is malformed") from exc
    if not isinstance(doc, dict) or doc.get("v") != 1:
        version = doc.get("v") if isinstance(doc, dict) else None
        raise IntegrityError(f"tree has unknown version {version!r}")
    if not isinstance(doc.get("nodes"), list):
        raise IntegrityError("tree is malformed: no list of entries")
    nodes = [_decode_node(item) for item in doc["nodes"]]
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


class AuditHead(NamedTuple):
    """The head of an audit chain (docs/format.md §19) as a snapshot names it: the last
    record of its host's chain before the snapshot was saved (seq -1, mac "": none yet)."""

    chain: str
    seq: int
    mac: str


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
    # As stored: the repository keeps and copies any kind's facts without reading them
    # (PostgreSQL's are read through medvault.postgres.facts).
    facts: dict[str, Any] = field(default_factory=dict)
    program: str = ""
    origin: str | None = None  # "<repository id>:<snapshot id>" of the snapshot this copies
    # Its host's audit chain head before it was saved (snapshot set authentication); None in
    # snapshots written before the audit trail, or by a session that records no audit.
    audit_head: AuditHead | None = None
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
    doc = {"v": 1, **snapshot_fields(snap)}
    if snap.audit_head is not None:
        doc["audit_head"] = snap.audit_head._asdict()
    return msgpack.packb(doc)


def _audit_head(value: object, snapshot_id: str) -> AuditHead | None:
    """The optional `audit_head` map, checked (absent in older snapshots)."""
    if value is None:
        return None
    if isinstance(value, dict):
        chain, seq, mac = value.get("chain"), value.get("seq"), value.get("mac")
        if (
            isinstance(chain, str)
            and isinstance(seq, int)
            and not isinstance(seq, bool)
            and seq >= -1
            and isinstance(mac, str)
        ):
            return AuditHead(chain, seq, mac)
    raise IntegrityError(f"snapshot {snapshot_id[:12]} has a malformed 'audit_head'")


def _snapshot_field(doc: dict[str, Any], key: str, snapshot_id: str) -> Any:
    """A stored snapshot field, checked against what readers of Snapshot rely on."""
    value: Any = doc.get(key)
    if key not in doc:
        ok = False
    elif key in ("time", "end_time"):
        ok = isinstance(value, str) and _aware_time(value)
    elif key in ("paths", "tags"):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    elif key == "tree":
        ok = _is_blob_id(value)
    elif key in ("parent", "tier", "origin"):
        ok = value is None or isinstance(value, str)
    elif key in ("stats", "facts"):
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise IntegrityError(f"snapshot {snapshot_id[:12]} has a malformed {key!r}")
    return value


def _aware_time(text: str) -> bool:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def decode_snapshot(raw: bytes, snapshot_id: str) -> Snapshot:
    try:
        doc = msgpack.unpackb(raw)
    except (ValueError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"snapshot {snapshot_id[:12]} is malformed") from exc
    if not isinstance(doc, dict) or doc.get("v") != 1:
        version = doc.get("v") if isinstance(doc, dict) else None
        raise IntegrityError(f"snapshot {snapshot_id[:12]} has unknown version {version!r}")
    if "origin" not in doc:
        doc["origin"] = None  # snapshots written before copies existed
    fields = {key: _snapshot_field(doc, key, snapshot_id) for key in _SNAPSHOT_KEYS}
    fields["backup_type"] = fields.pop("type")
    fields["audit_head"] = _audit_head(doc.get("audit_head"), snapshot_id)
    return Snapshot(**fields, id=snapshot_id)


_SNAPSHOT_KEYS = (
    "time",
    "end_time",
    "host",
    "user",
    "source",
    "kind",
    "type",
    "paths",
    "tree",
    "tags",
    "parent",
    "tier",
    "stats",
    "facts",
    "program",
    "origin",
)
