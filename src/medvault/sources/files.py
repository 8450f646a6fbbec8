"""File-system source: walks paths, chunks files and builds the snapshot's trees.

Incremental backups reuse a file's blobs from the parent snapshot when size, mtime, ctime
and inode all match, except for files modified within a second of the parent's start (their
mtime cannot tell a later edit in the same tick). Trees are resolved in post-order from a
bounded queue, so the pipeline never drains at a directory boundary.
"""

from __future__ import annotations

import errno
import fnmatch
import grp
import os
import pwd
import socket
import stat
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from medvault import __version__
from medvault.dirpath import DirPath
from medvault.errors import MedvaultError, SourceUnavailable, UsageError
from medvault.repository.chunker import Chunker, ReadsInto
from medvault.repository.keys import now_iso
from medvault.repository.packs import DATA_BLOB, TREE_BLOB
from medvault.repository.records import (
    DIR,
    FILE,
    SYMLINK,
    Node,
    Snapshot,
    display_path,
    encode_tree,
)
from medvault.repository.repo import Repository
from medvault.repository.writer import BlobSink, DryRunSink

BACKUP_TYPES = ("full", "incremental", "differential")
PENDING_DIRS = 64
Trie = dict[bytes, "Trie | None"]
RACY_WINDOW_NS = 1_000_000_000


class BlockVerifier(Protocol):
    """Checks a file's bytes as they are read (PostgreSQL page checksums)."""

    bad_blocks: list[int]

    def feed(self, data: memoryview, offset: int) -> None: ...

    def finish(self) -> None: ...

    def recheck(self, fd: int) -> None: ...


# prune(directory, entry names) -> (names to leave out, directories to keep but empty)
Pruner = Callable[[bytes, list[bytes]], tuple[set[bytes], set[bytes]]]
# verifier_for(path) -> what checks the file's bytes as they are read, or None
VerifierFactory = Callable[[bytes], "BlockVerifier | None"]
# Called after the data is stored and before the snapshot is written: the facts to record,
# or an exception that abandons the snapshot.
Finalizer = Callable[[], dict[str, Any]]
# Fills the tree from something other than a directory on this host (pg_basebackup's tar
# stream), entry by entry through a TreeBuilder.
TreeFeed = Callable[["TreeBuilder"], None]


@dataclass
class BackupOptions:
    source: str
    paths: list[str]
    backup_type: str = "incremental"
    tags: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    skip_paths: tuple[str, ...] = ()  # exact paths left out, e.g. the repository itself
    tier: str | None = None
    verify: bool = True
    workers: int | None = None
    kind: str = "files"
    # Snapshot root entry name ("a" or "a/b") -> directory: the tree is laid out by role
    # (e.g. pgdata/, tablespaces/16400/) rather than mirroring absolute paths.
    layout: dict[str, str] | None = None
    prune: Pruner | None = None
    verifier_for: VerifierFactory | None = None
    # A live database directory: files change and vanish while read, and that is expected
    # (WAL replay repairs it), so it is neither reported nor a reason to call it incomplete.
    volatile: bool = False
    finalize: Finalizer | None = None
    parent_filter: Callable[[Snapshot], bool] | None = None  # which snapshots may be parents
    # With a feed, the layout's one entry names the root the feed fills (and what the
    # snapshot records as its path), and nothing is walked.
    feed: TreeFeed | None = None


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str


@dataclass
class BackupResult:
    snapshot: Snapshot
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    bytes_read: int = 0
    bytes_added: int = 0
    duration: float = 0.0
    unreadable: list[Problem] = field(default_factory=list)
    changed_while_read: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    bad_blocks: list[tuple[str, list[int]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unreadable and not self.changed_while_read


@dataclass
class DryRunResult:
    """What a backup would read and add, from a walk that wrote nothing."""

    backup_type: str  # as the backup would be taken: full when there is no parent
    parent: str | None
    files_new: int
    files_changed: int
    files_unchanged: int
    dirs: int
    bytes_total: int  # of every file in the backup, read or not
    bytes_read: int  # what the backup would read (new and changed files)
    blobs_new: int
    bytes_new: int  # new to the repository after deduplication, before compression
    bytes_added: int  # what those would take in packs (compressed and sealed)
    duration: float
    unreadable: list[Problem] = field(default_factory=list)
    changed_while_read: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)


@lru_cache(maxsize=1024)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=1024)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def node_from_stat(name: bytes, st: os.stat_result) -> Node:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind = FILE
    elif stat.S_ISDIR(mode):
        kind = DIR
    elif stat.S_ISLNK(mode):
        kind = SYMLINK
    elif stat.S_ISFIFO(mode):
        kind = "fifo"
    elif stat.S_ISSOCK(mode):
        kind = "socket"
    elif stat.S_ISCHR(mode):
        kind = "chardev"
    else:
        kind = "blockdev"
    return Node(
        name=name,
        type=kind,
        mode=stat.S_IMODE(mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=_user(st.st_uid),
        group=_group(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        dev=st.st_dev,
        size=st.st_size if kind == FILE else 0,
    )


class _PendingDir:
    """A directory whose entries may still wait for blob ids."""

    __slots__ = ("entries", "tree")

    def __init__(self) -> None:
        self.entries: list[tuple[Node, list[Future[bytes]] | _PendingDir | None]] = []
        self.tree: Future[bytes] | None = None


@dataclass
class _Listing:
    """A directory being walked: its entries (name and lstat) still to add, in name order."""

    pending: _PendingDir
    entries: list[tuple[bytes, os.stat_result]]
    parent_nodes: dict[bytes, Node]
    keep_empty: set[bytes]
    next: int = 0


def _parse_time_ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1e9)


def choose_parent(
    repo: Repository,
    source: str,
    backup_type: str,
    kind: str = "files",
    accept: Callable[[Snapshot], bool] | None = None,
) -> Snapshot | None:
    if backup_type == "full":
        return None
    candidates = [
        s
        for s in repo.list_snapshots()
        if s.source == source and s.kind == kind and (accept is None or accept(s))
    ]
    if backup_type == "differential":
        candidates = [s for s in candidates if s.backup_type == "full"]
    return repo.newest(candidates)


class FileBackup:
    def __init__(
        self,
        repo: Repository,
        options: BackupOptions,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        if options.backup_type not in BACKUP_TYPES:
            raise UsageError(f"--type must be one of {', '.join(BACKUP_TYPES)}")
        self.repo = repo
        self.options = options
        self._on_progress = on_progress
        self._chunker = Chunker(repo.config.chunker, repo.master.chunker_seed)
        self._pending: deque[_PendingDir] = deque()
        self._skip = {os.fsencode(os.path.abspath(p)) for p in options.skip_paths}
        self._skip_names = {os.path.basename(p) for p in self._skip}
        self._path_patterns = any("/" in pattern for pattern in options.excludes)
        self._parent_cutoff_ns = 0
        self._counts = {
            "new": 0,
            "changed": 0,
            "unchanged": 0,
            "dirs": 0,
            "read": 0,
            "total": 0,
        }
        self._unreadable: list[Problem] = []
        self._changed: list[Problem] = []
        self._skipped: list[Problem] = []
        self._bad_blocks: list[tuple[str, list[int]]] = []

    # -- entry point -----------------------------------------------------------------------

    def run(self) -> BackupResult:
        roots = self._roots()
        started = time.monotonic()
        start_time = now_iso()
        with self.repo.lock(exclusive=False, purpose=f"backup of {self.options.source}") as lock:
            self.repo.index  # noqa: B018 - load it once here, before worker threads need it
            parent = choose_parent(
                self.repo,
                self.options.source,
                self.options.backup_type,
                self.options.kind,
                self.options.parent_filter,
            )
            backup_type = self.options.backup_type if parent else "full"
            if parent is not None:
                self._parent_cutoff_ns = _parse_time_ns(parent.time) - RACY_WINDOW_NS
            sink = BlobSink(
                self.repo,
                verify=self.options.verify,
                workers=self.options.workers,
                on_progress=self._on_progress,
            )
            self._sink: BlobSink | DryRunSink = sink
            try:
                root = self._walk_roots(roots, parent.tree if parent else None)
                while self._pending:
                    self._resolve(self._pending.popleft())
                assert root.tree is not None
                tree_id = root.tree.result()
                sink.flush()
                facts = self.options.finalize() if self.options.finalize else {}
            except BaseException:
                sink.abort()
                raise
            duration = time.monotonic() - started
            snapshot = Snapshot(
                time=start_time,
                end_time=now_iso(),
                host=socket.gethostname(),
                user=_user(os.getuid()) or str(os.getuid()),
                source=self.options.source,
                kind=self.options.kind,
                backup_type=backup_type,
                paths=tuple(display_path(p) for p in sorted(roots)),
                tree=tree_id,
                tags=self.options.tags,
                parent=parent.id if parent else None,
                tier=self.options.tier,
                stats={
                    "files_new": self._counts["new"],
                    "files_changed": self._counts["changed"],
                    "files_unchanged": self._counts["unchanged"],
                    "dirs": self._counts["dirs"],
                    "total_bytes": self._counts["total"],
                    "bytes_read": self._counts["read"],
                    "bytes_added": sink.stats.bytes_stored,
                    "blobs_added": sink.stats.blobs_new,
                    "unreadable": len(self._unreadable),
                    "changed_while_read": len(self._changed),
                    "duration_s": round(duration, 3),
                },
                facts=facts,
                program=f"medvault {__version__}",
            )
            snapshot_id = self.repo.save_snapshot(snapshot, lock)
        snapshot = Snapshot(**{**snapshot.__dict__, "id": snapshot_id})
        return BackupResult(
            snapshot=snapshot,
            files_new=self._counts["new"],
            files_changed=self._counts["changed"],
            files_unchanged=self._counts["unchanged"],
            dirs=self._counts["dirs"],
            bytes_read=self._counts["read"],
            bytes_added=sink.stats.bytes_stored,
            duration=duration,
            unreadable=self._unreadable,
            changed_while_read=self._changed,
            skipped=self._skipped,
            bad_blocks=self._bad_blocks,
        )

    def dry_run(self) -> DryRunResult:
        """Walk and chunk as run() does, against the repository's index, and store nothing:
        no pack, index or snapshot (the shared lock is held while reading, then removed)."""
        roots = self._roots()
        started = time.monotonic()
        source = self.options.source
        with self.repo.lock(exclusive=False, purpose=f"dry run of a backup of {source}"):
            self.repo.index  # noqa: B018 - loaded before worker threads need it
            parent = choose_parent(
                self.repo,
                source,
                self.options.backup_type,
                self.options.kind,
                self.options.parent_filter,
            )
            if parent is not None:
                self._parent_cutoff_ns = _parse_time_ns(parent.time) - RACY_WINDOW_NS
            sink = DryRunSink(
                self.repo, workers=self.options.workers, on_progress=self._on_progress
            )
            self._sink = sink
            try:
                root = self._walk_roots(roots, parent.tree if parent else None)
                while self._pending:
                    self._resolve(self._pending.popleft())
                assert root.tree is not None
                root.tree.result()
                sink.flush()
            except BaseException:
                sink.abort()
                raise
        return DryRunResult(
            backup_type=self.options.backup_type if parent else "full",
            parent=parent.id if parent else None,
            files_new=self._counts["new"],
            files_changed=self._counts["changed"],
            files_unchanged=self._counts["unchanged"],
            dirs=self._counts["dirs"],
            bytes_total=self._counts["total"],
            bytes_read=self._counts["read"],
            blobs_new=sink.stats.blobs_new,
            bytes_new=sink.stats.bytes_new,
            bytes_added=sink.stats.bytes_stored,
            duration=time.monotonic() - started,
            unreadable=self._unreadable,
            changed_while_read=self._changed,
            skipped=self._skipped,
        )

    def _roots(self) -> list[bytes]:
        if self.options.layout is not None:
            return [os.fsencode(p) for p in self.options.layout.values()]
        if not self.options.paths:
            raise UsageError("nothing to back up: give one or more paths")
        roots = []
        for raw in self.options.paths:
            path = os.path.abspath(os.fsencode(raw))
            try:
                os.lstat(path)
            except FileNotFoundError:
                raise SourceUnavailable(f"path {raw} does not exist") from None
            except OSError as exc:
                raise SourceUnavailable(f"cannot read {raw}: {exc.strerror}") from None
            roots.append(path)
        return roots

    # -- walking ---------------------------------------------------------------------------

    def _walk_roots(self, roots: list[bytes], parent_tree: bytes | None) -> _PendingDir:
        """The snapshot's root mirrors absolute paths: /app/uploads is stored as app/uploads,
        each intermediate directory with its own metadata."""
        if self.options.feed is not None:
            return self._take_feed(self.options.feed)
        if self.options.layout is not None:
            return self._walk_layout(self.options.layout, parent_tree)
        if b"/" in roots:
            return self._walk_dir(b"/", parent_tree)
        trie: Trie = {}
        for root in sorted(roots, key=len):  # ancestors first: they swallow descendants
            parts = root.strip(b"/").split(b"/")
            level: Trie | None = trie
            for part in parts[:-1]:
                assert level is not None
                level = level.setdefault(part, {})
                if level is None:
                    break
            else:
                assert level is not None
                level[parts[-1]] = None
        return self._walk_trie(b"", trie, parent_tree)

    def _walk_trie(self, base: bytes, trie: Trie, parent_tree: bytes | None) -> _PendingDir:
        pending = _PendingDir()
        parent_nodes = self._parent_nodes(parent_tree)
        for name, sub in sorted(trie.items()):
            path = base + b"/" + name
            try:
                # A directory on the way to a root is followed if it is a symlink: the
                # snapshot records the directory the path leads through.
                st = os.lstat(path) if sub is None else os.stat(path)
            except OSError as exc:
                self._unreadable.append(Problem(display_path(path), exc.strerror or str(exc)))
                continue
            node = node_from_stat(name, st)
            prior = parent_nodes.get(name)
            prior_tree = prior.subtree if prior is not None and prior.type == DIR else None
            if sub is None and node.type == DIR:
                pending.entries.append((node, self._walk_dir(path, prior_tree, follow=False)))
                self._counts["dirs"] += 1
            elif sub is None:
                self._add_root_entry(pending, base, name, node, prior)
            elif node.type != DIR:
                reason = "is not a directory, but a path to back up lies below it"
                self._unreadable.append(Problem(display_path(path), reason))
            else:
                pending.entries.append((node, self._walk_trie(path, sub, prior_tree)))
                self._counts["dirs"] += 1
        self._enqueue(pending)
        return pending

    def _add_root_entry(
        self, pending: _PendingDir, base: bytes, name: bytes, node: Node, prior: Node | None
    ) -> None:
        """A path to back up that is not a directory (a file, a symlink)."""
        directory = base or b"/"
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            problem = Problem(display_path(base + b"/" + name), exc.strerror or str(exc))
            self._unreadable.append(problem)
            return
        try:
            self._add_entry(pending, DirPath(fd, directory), name, node, prior)
        finally:
            os.close(fd)

    def _walk_layout(self, layout: dict[str, str], parent_tree: bytes | None) -> _PendingDir:
        pending = _PendingDir()
        parent_nodes = self._parent_nodes(parent_tree)
        nested: dict[str, dict[str, str]] = {}
        for entry, path in sorted(layout.items()):
            head, _, rest = entry.partition("/")
            name = os.fsencode(head)
            prior = parent_nodes.get(name)
            prior_tree = prior.subtree if prior is not None and prior.type == DIR else None
            if rest:
                nested.setdefault(head, {})[rest] = path
                continue
            try:
                st = os.stat(path)  # the role's directory itself may be reached by a symlink
            except OSError as exc:
                raise SourceUnavailable(f"cannot read {path}: {exc.strerror}") from None
            if not stat.S_ISDIR(st.st_mode):
                raise SourceUnavailable(f"{path} is not a directory")
            node = node_from_stat(name, st)
            pending.entries.append((node, self._walk_dir(os.fsencode(path), prior_tree)))
            self._counts["dirs"] += 1
        for head, sub in nested.items():
            name = os.fsencode(head)
            prior = parent_nodes.get(name)
            prior_tree = prior.subtree if prior is not None and prior.type == DIR else None
            node = Node(name=name, type=DIR, mode=0o700, mtime_ns=time.time_ns())
            pending.entries.append((node, self._walk_layout(sub, prior_tree)))
            self._counts["dirs"] += 1
        self._enqueue(pending)
        return pending

    def _take_feed(self, feed: TreeFeed) -> _PendingDir:
        if self.options.layout is None or len(self.options.layout) != 1:
            raise UsageError("a fed backup needs a layout of exactly one root")
        tree = TreeBuilder(self, os.fsencode(next(iter(self.options.layout))))
        feed(tree)
        return tree._finish()

    def _excluded(self, dirs: DirPath, name: bytes) -> bool:
        # The whole path is built only when a rule needs it: it costs the depth.
        if name in self._skip_names and dirs.path(name) in self._skip:
            return True
        if not self.options.excludes:
            return False
        path = dirs.path(name) if self._path_patterns else name
        text, base = os.fsdecode(path), os.fsdecode(name)
        return any(
            fnmatch.fnmatchcase(text if "/" in pattern else base, pattern)
            for pattern in self.options.excludes
        )

    def _walk_dir(self, path: bytes, parent_tree: bytes | None, follow: bool = True) -> _PendingDir:
        """The tree below directory `path`, walked with an explicit stack (a tree may be
        deeper than Python's recursion limit) and through directory descriptors (its paths
        may be longer than PATH_MAX). Each directory is enqueued after its subdirectories,
        as the post-order resolution needs."""
        root = _PendingDir()
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            self._unreadable_unless_vanished(path, exc)
            self._enqueue(root)
            return root
        dirs = DirPath(fd, path)
        try:
            listing = self._list(dirs, root, parent_tree)
            if listing is None:
                self._enqueue(root)
                return root
            listings = [listing]
            while listings:
                below = self._add_until_subdirectory(dirs, listings[-1])
                if below is not None:
                    listings.append(below)
                    continue
                self._enqueue(listings.pop().pending)
                if listings:
                    self._back_to(dirs, listings[-1])
        finally:
            dirs.close()
            os.close(fd)
        return root

    def _unreadable_unless_vanished(self, path: bytes, exc: OSError) -> None:
        if not (self.options.volatile and isinstance(exc, FileNotFoundError)):
            self._unreadable.append(Problem(display_path(path), exc.strerror or str(exc)))

    def _list(
        self, dirs: DirPath, pending: _PendingDir, parent_tree: bytes | None
    ) -> _Listing | None:
        """The current directory's entries to back up, each with its lstat (taken now,
        relative to this directory's descriptor, which may be closed and reopened under
        another number while a subdirectory is walked)."""
        try:
            names = sorted(os.fsencode(name) for name in os.listdir(dirs.fd))
        except OSError as exc:
            self._unreadable_unless_vanished(dirs.path(), exc)
            return None
        leave_out: set[bytes] = set()
        keep_empty: set[bytes] = set()
        if self.options.prune is not None:
            leave_out, keep_empty = self.options.prune(dirs.path(), names)
        entries = []
        for name in names:
            if name in leave_out or self._excluded(dirs, name):
                continue
            try:
                st = os.stat(name, dir_fd=dirs.fd, follow_symlinks=False)
            except OSError as exc:
                self._unreadable_unless_vanished(dirs.path(name), exc)
                continue
            entries.append((name, st))
        return _Listing(pending, entries, self._parent_nodes(parent_tree), keep_empty)

    def _add_until_subdirectory(self, dirs: DirPath, listing: _Listing) -> _Listing | None:
        """Add the listing's entries in order up to the next subdirectory to walk, which is
        entered and returned; None when the listing is done."""
        while listing.next < len(listing.entries):
            name, st = listing.entries[listing.next]
            listing.next += 1
            node = node_from_stat(name, st)
            prior = listing.parent_nodes.get(name)
            if node.type != DIR:
                self._add_entry(listing.pending, dirs, name, node, prior)
                continue
            below = _PendingDir()
            listing.pending.entries.append((node, below))
            self._counts["dirs"] += 1
            if name not in listing.keep_empty:
                try:
                    dirs.enter(name)
                except OSError as exc:
                    self._unreadable_unless_vanished(dirs.path(name), exc)
                else:
                    prior_tree = prior.subtree if prior is not None and prior.type == DIR else None
                    walked = self._list(dirs, below, prior_tree)
                    if walked is not None:
                        return walked
                    self._back_to(dirs, listing)
            self._enqueue(below)
        return None

    def _back_to(self, dirs: DirPath, listing: _Listing) -> None:
        """Up from a subdirectory to the directory of `listing`. If that was moved away in
        the meantime, what it still held cannot be read (the backup is incomplete, not
        stopped: anyone who can write into a backed-up folder can move directories)."""
        if not dirs.leave():
            reason = "moved or replaced while it was read"
            self._unreadable.append(Problem(display_path(dirs.path()), reason))
            listing.next = len(listing.entries)

    def _add_entry(
        self, pending: _PendingDir, dirs: DirPath, name: bytes, node: Node, prior: Node | None
    ) -> None:
        """A file, symlink or special file in the current directory of `dirs`."""
        if node.type == FILE:
            self._add_file(pending, dirs, name, node, prior)
        elif node.type == SYMLINK:
            try:
                target = os.readlink(name, dir_fd=dirs.fd)
            except OSError as exc:
                self._unreadable_unless_vanished(dirs.path(name), exc)
                return
            pending.entries.append((Node(**{**node.__dict__, "target": target}), None))
        else:
            self._skipped.append(
                Problem(display_path(dirs.path(name)), f"{node.type} files are not backed up")
            )

    def _parent_nodes(self, tree_id: bytes | None) -> dict[bytes, Node]:
        if tree_id is None:
            return {}
        return {node.name: node for node in self.repo.load_tree(tree_id)}

    # -- files -----------------------------------------------------------------------------

    def _add_file(
        self, pending: _PendingDir, dirs: DirPath, name: bytes, node: Node, prior: Node | None
    ) -> None:
        if (
            prior is not None
            and node.same_file(prior)
            and node.mtime_ns < self._parent_cutoff_ns
            and all(blob in self.repo.index for blob in prior.content)
        ):
            self._counts["unchanged"] += 1
            self._counts["total"] += node.size
            pending.entries.append((node.with_content(prior.content), None))
            return
        read = self._read_file(dirs, name, node)
        if read is None:
            return
        node, futures = read
        self._counts["changed" if prior is not None else "new"] += 1
        self._counts["total"] += node.size
        pending.entries.append((node, futures))

    def _open(self, dir_fd: int, name: bytes) -> int:
        # O_NONBLOCK: a FIFO swapped in after the scan must not hang the backup.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
        except PermissionError:
            fd = os.open(name, flags, dir_fd=dir_fd)  # O_NOATIME needs ownership
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "no longer a regular file")
        os.set_blocking(fd, True)
        return fd

    def _read_file(
        self, dirs: DirPath, name: bytes, node: Node
    ) -> tuple[Node, list[Future[bytes]]] | None:
        futures: list[Future[bytes]] = []
        total = 0
        path = dirs.path(name) if self.options.verifier_for else b""
        verifier = self.options.verifier_for(path) if self.options.verifier_for else None
        try:
            fd = self._open(dirs.fd, name)
            with os.fdopen(fd, "rb", buffering=0) as handle:
                before = os.fstat(fd)
                on_block = verifier.feed if verifier is not None else None
                for chunk in self._chunker.chunks(handle, on_block):
                    total += len(chunk)
                    futures.append(self._sink.submit(chunk, DATA_BLOB))
                after = os.fstat(fd)
                if verifier is not None:
                    verifier.finish()
                    if verifier.bad_blocks:
                        verifier.recheck(fd)  # a page torn by a concurrent write reads well now
                    if verifier.bad_blocks:
                        self._bad_blocks.append((display_path(path), list(verifier.bad_blocks)))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                shown = display_path(dirs.path(name))
                raise MedvaultError(f"disk full while reading {shown}") from exc
            if self.options.volatile and isinstance(exc, FileNotFoundError):
                return None  # dropped while the backup ran; WAL replay removes it anyway
            # Chunks already queued finish normally and become unreferenced blobs; cancelling
            # them would leave the writer waiting for work that never runs.
            self._unreadable.append(
                Problem(display_path(dirs.path(name)), exc.strerror or str(exc))
            )
            return None
        self._counts["read"] += total
        moved = (before.st_ino, before.st_mtime_ns, before.st_size) != (
            node.inode,
            node.mtime_ns,
            node.size,
        )
        changed = (after.st_mtime_ns, after.st_ctime_ns, after.st_size) != (
            before.st_mtime_ns,
            before.st_ctime_ns,
            before.st_size,
        )
        if (moved or changed or total != after.st_size) and not self.options.volatile:
            shown = display_path(dirs.path(name))
            self._changed.append(Problem(shown, "file changed while it was read"))
        stored = node_from_stat(node.name, after)
        return Node(**{**stored.__dict__, "size": total}), futures

    # -- trees -----------------------------------------------------------------------------

    def _enqueue(self, pending: _PendingDir) -> None:
        self._pending.append(pending)
        while len(self._pending) > PENDING_DIRS:
            self._resolve(self._pending.popleft())

    def _resolve(self, pending: _PendingDir) -> None:
        """Children are always enqueued before their parent, so their trees exist already."""
        nodes = []
        for node, work in pending.entries:
            if isinstance(work, _PendingDir):
                assert work.tree is not None
                nodes.append(Node(**{**node.__dict__, "subtree": work.tree.result()}))
            elif work is not None:
                nodes.append(node.with_content(tuple(f.result() for f in work)))
            else:
                nodes.append(node)
        pending.entries = []
        pending.tree = self._sink.submit(encode_tree(nodes), TREE_BLOB)


class TreeBuilder:
    """A backup's tree handed over entry by entry (by path below the root, in any order)
    instead of walked. Each file is chunked and stored as it arrives; a directory the feed
    names only as a parent is made (0700, now) and takes the feed's metadata if it comes
    later; the trees are built when the feed ends, children before parents."""

    def __init__(self, backup: FileBackup, root_name: bytes) -> None:
        self._backup = backup
        self._now = time.time_ns()
        self._root = Node(name=root_name, type=DIR, mode=0o700, mtime_ns=self._now)
        self._dirs: dict[bytes, Node] = {b"": self._root}
        # directory -> its entries: a node with its blob futures (files), None (symlinks)
        # or the path of a subdirectory
        self._children: dict[bytes, list[tuple[Node, list[Future[bytes]] | bytes | None]]] = {
            b"": []
        }

    def add_directory(self, path: bytes, node: Node) -> None:
        parent = self._parent_of(path)
        if path not in self._children:
            self._children[path] = []
            self._children[parent].append((node, path))
        self._dirs[path] = node

    def add_symlink(self, path: bytes, node: Node) -> None:
        self._children[self._parent_of(path)].append((node, None))

    def add_file(self, path: bytes, node: Node, content: ReadsInto) -> None:
        """Read `content` to its end into the backup; `node` gets the size read."""
        backup = self._backup
        parent = self._parent_of(path)
        verifier = backup.options.verifier_for(path) if backup.options.verifier_for else None
        futures = []
        total = 0
        on_block = verifier.feed if verifier is not None else None
        for chunk in backup._chunker.chunks(content, on_block):
            total += len(chunk)
            futures.append(backup._sink.submit(chunk, DATA_BLOB))
        if verifier is not None:
            verifier.finish()
        backup._counts["new"] += 1
        backup._counts["read"] += total
        backup._counts["total"] += total
        self._children[parent].append((Node(**{**node.__dict__, "size": total}), futures))

    def _parent_of(self, path: bytes) -> bytes:
        parent = path.rpartition(b"/")[0]
        if parent not in self._children:
            self._make_dir(parent)
        return parent

    def _make_dir(self, path: bytes) -> None:
        parent, _, name = path.rpartition(b"/")
        if parent not in self._children:
            self._make_dir(parent)
        self._dirs[path] = Node(name=name, type=DIR, mode=0o700, mtime_ns=self._now)
        self._children[path] = []
        self._children[parent].append((self._dirs[path], path))

    def _finish(self) -> _PendingDir:
        backup = self._backup

        def build(key: bytes) -> _PendingDir:
            pending = _PendingDir()
            for node, work in self._children[key]:
                if isinstance(work, bytes):
                    pending.entries.append((self._dirs[work], build(work)))
                    backup._counts["dirs"] += 1
                else:
                    pending.entries.append((node, work))
            backup._enqueue(pending)
            return pending

        root = _PendingDir()
        root.entries.append((self._root, build(b"")))
        backup._enqueue(root)
        return root


def backup_files(
    repo: Repository, options: BackupOptions, on_progress: Callable[[int], None] | None = None
) -> BackupResult:
    return FileBackup(repo, options, on_progress).run()


def dry_run_files(
    repo: Repository, options: BackupOptions, on_progress: Callable[[int], None] | None = None
) -> DryRunResult:
    return FileBackup(repo, options, on_progress).dry_run()
