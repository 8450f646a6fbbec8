"""Restore a files snapshot into a target directory.

Every path is created relative to an open directory descriptor with O_NOFOLLOW, so neither
a hostile snapshot ('..', '/', a symlink followed by a file of the same name) nor a symlink
planted in the target can make a write land outside the target. Files are written under a
temporary name and renamed into place, so a failed restore never leaves a half-written file
where a real one is expected. Blobs are fetched and verified in parallel, written in order.

A delta restore reuses a target that already holds an older copy (a data directory being
resynchronised, an interrupted restore): a file whose content chunks to the snapshot's blob
ids is kept, any other is rewritten, and whatever the snapshot does not hold is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field

from medvault import faults
from medvault.dirpath import DirPath, remove_tree
from medvault.errors import (
    IntegrityError,
    RestoreTargetError,
    SnapshotNotFound,
    TargetFull,
    UnsafeSnapshot,
    UsageError,
)
from medvault.repository.chunker import Chunker
from medvault.repository.readahead import PREFETCH_BLOBS, ordered_prefetch
from medvault.repository.records import DIR, FILE, SYMLINK, Node, Snapshot, check_name, display_path
from medvault.repository.repo import Repository

WRITERS = 4
TEMP_PREFIX = b".medvault-restore-"
TEMP_RANDOM = 6  # bytes, shown as hex after TEMP_PREFIX
HEX_DIGITS = b"0123456789abcdef"
WRITEBACK_EVERY = 32 * 1024 * 1024
SYNC_FILE_RANGE_WRITE = 2
SETID_BITS = stat.S_ISUID | stat.S_ISGID


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sync_file_range  # noqa: B018 - Linux only; absent elsewhere
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


@dataclass(frozen=True, eq=False, slots=True)
class PlannedEntry:
    """One entry of a restore plan. An entry names the entry of its directory rather than
    carrying its whole path, so a plan stays linear in size however deep the tree (a path
    per entry is quadratic: 400 MB of tuples for a chain of 10,000 directories)."""

    parent: PlannedEntry | None  # None: directly in the target
    name: bytes  # one validated component
    node: Node
    depth: int  # 1 for an entry directly in the target

    @property
    def parts(self) -> tuple[bytes, ...]:
        """The path below the target, one component each (for messages: it costs the depth)."""
        names = []
        entry: PlannedEntry | None = self
        while entry is not None:
            names.append(entry.name)
            entry = entry.parent
        return tuple(reversed(names))


def _planned(parent: PlannedEntry | None, node: Node) -> PlannedEntry:
    return PlannedEntry(parent, node.name, node, parent.depth + 1 if parent else 1)


@dataclass
class RestoreResult:
    files: int = 0  # files written (in a delta restore: rewritten)
    files_unchanged: int = 0  # delta: files kept because their content already matched
    # delta: entries in the target that the snapshot does not hold; overwrite: files a
    # killed restore left unfinished under temporary names
    removed: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_written: int = 0
    duration: float = 0.0
    skipped: list[str] = field(default_factory=list)
    setid_cleared: int = 0  # files whose setuid/setgid bits were not restored


def _split(path: str) -> tuple[bytes, ...]:
    parts = tuple(p for p in os.fsencode(path).split(b"/") if p and p != b".")
    for part in parts:
        check_name(part)
    return parts


def include_parts(path: str) -> tuple[bytes, ...]:
    """A path given to `--include`, as components. It comes from the user, not from the
    snapshot: what is wrong with it is a usage error that names the option."""
    if not path:
        raise UsageError(
            "--include '' names no path (an unset variable?); give a path inside the "
            "snapshot, or leave --include out to restore everything"
        )
    parts = tuple(p for p in os.fsencode(path).split(b"/") if p and p != b".")
    if b".." in parts:
        raise UsageError(
            f"--include {path!r}: a path inside a snapshot has no '..'; give it as it was "
            "backed up, e.g. /etc/hosts"
        )
    return parts


def _subtree(repo: Repository, snapshot: Snapshot, root: str) -> bytes:
    """The tree of directory `root` inside the snapshot ("" is the snapshot's own root)."""
    tree = snapshot.tree
    for name in _split(root):
        node = next((n for n in repo.load_tree(tree) if n.name == name), None)
        if node is None or node.subtree is None:
            raise SnapshotNotFound(
                f"directory /{root.strip('/')} is not in snapshot {snapshot.short_id}"
            )
        tree = node.subtree
    return tree


def plan_restore(
    repo: Repository, snapshot: Snapshot, includes: Iterable[str] = (), root: str = ""
) -> list[PlannedEntry]:
    """Entries in creation order: each directory before what it holds. With `root`, the
    plan covers that directory of the snapshot, its paths relative to it."""
    # Sorted, so that entries sharing a parent are planned together and the plan stays
    # depth-first: the restore keeps only the directories on the current path open.
    wanted = sorted({include_parts(p) for p in includes}) or [()]
    start = _subtree(repo, snapshot, root)
    plan: list[PlannedEntry] = []
    on_the_way: dict[tuple[bytes, ...], PlannedEntry] = {}  # included paths and their parents
    whole: list[tuple[bytes, ...]] = []  # included paths planned with all below them
    for parts in wanted:
        covered = any(parts[: len(done)] == done for done in whole)
        tree: bytes | None = start
        parent: PlannedEntry | None = None
        for depth, name in enumerate(parts):
            nodes = {n.name: n for n in repo.load_tree(tree)} if tree else {}
            node = nodes.get(name)
            if node is None:
                shown = "/".join(display_path(p) for p in parts)
                raise SnapshotNotFound(f"path /{shown} is not in snapshot {snapshot.short_id}")
            prefix = parts[: depth + 1]
            entry = on_the_way.get(prefix)
            if entry is None:
                entry = on_the_way[prefix] = _planned(parent, node)
                if not covered:
                    plan.append(entry)
            parent, tree = entry, node.subtree
        if covered:
            continue  # below an included directory: planned with it already
        whole.append(parts)
        if tree is not None:
            _plan_tree(repo, tree, parent, plan)
    return plan


def _plan_tree(
    repo: Repository, tree: bytes, parent: PlannedEntry | None, plan: list[PlannedEntry]
) -> None:
    """Everything below `tree`, depth-first, with an explicit stack: a tree may be deeper
    than Python's recursion limit."""
    levels = [iter(repo.load_tree(tree))]
    parents = [parent]
    while levels:
        node = next(levels[-1], None)
        if node is None:
            levels.pop()
            parents.pop()
            continue
        entry = _planned(parents[-1], node)
        plan.append(entry)
        if node.subtree is not None:
            levels.append(iter(repo.load_tree(node.subtree)))
            parents.append(entry)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing these bytes out now, without waiting: the final
    syncfs then finds little left to do, instead of flushing the whole restore at once
    while the CPUs idle."""
    if length <= 0 or _libc is None:
        return
    _libc.sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(length), SYNC_FILE_RANGE_WRITE)


def _syncfs(fd: int) -> None:
    """Flush the file system holding fd (not every file system, as sync() would)."""
    if _libc is None or _libc.syncfs(fd) != 0:
        os.sync()


@dataclass
class _OpenDir:
    """A directory on the path to the current plan entry, with the writes into it not yet
    awaited (its descriptor is the DirPath's)."""

    entry: PlannedEntry | None  # None: the target itself
    writes: list[Future[int]] = field(default_factory=list)


class FileRestore:
    def __init__(
        self,
        repo: Repository,
        snapshot: Snapshot,
        target: str,
        *,
        includes: Iterable[str] = (),
        overwrite: bool = False,
        delta: bool = False,
        root: str = "",
        kinds: tuple[str, ...] = ("files",),
        workers: int | None = None,
        on_progress: Callable[[int], None] | None = None,
        atomic: bool = True,
        hold_back: Iterable[str] = (),
        keep_setuid: bool = False,
    ) -> None:
        """keep_setuid=False clears the setuid and setgid bits of restored files (see
        `_mode`). atomic=False writes files in place instead of under a temporary name (for a target
        that is unusable until the caller completes it, such as a data directory without
        pg_control); hold_back names paths the restore leaves out, for the caller to restore
        last."""
        self.repo = repo
        self.snapshot = snapshot
        self.target = os.path.abspath(target)
        self.includes = list(includes)
        self.delta = delta
        self.overwrite = overwrite or delta
        self.root = root
        self.kinds = kinds
        # Enough fetches in flight to hide a remote store's latency, at least one per core.
        self.workers = workers or max(os.cpu_count() or 2, repo.concurrency)
        self._on_progress = on_progress
        self._chown = os.geteuid() == 0
        self._chunkers = threading.local()  # a Chunker serves one thread (it owns a buffer)
        self._count_lock = threading.Lock()
        # Delta: the names each planned directory (None: the target) should hold.
        self._children: dict[PlannedEntry | None, set[bytes]] | None = None
        self.atomic = atomic
        self.hold_back = {_split(path) for path in hold_back}
        self.keep_setuid = keep_setuid
        self.result = RestoreResult()

    def run(self) -> RestoreResult:
        started = time.monotonic()
        if self.snapshot.kind not in self.kinds:
            raise RestoreTargetError(
                f"snapshot {self.snapshot.short_id} is a {self.snapshot.kind} snapshot, "
                f"not a {' or '.join(self.kinds)} snapshot"
            )
        plan = plan_restore(self.repo, self.snapshot, self.includes, self.root)
        if self.delta and not self.includes:
            # Only a whole-tree plan says everything a directory should hold.
            self._children = {None: set()}
            for entry in plan:
                self._children.setdefault(entry.parent, set()).add(entry.name)
                if entry.node.type == DIR:
                    self._children.setdefault(entry, set())
        if self.hold_back:
            depths = {len(parts) for parts in self.hold_back}
            plan = [
                entry
                for entry in plan
                if entry.depth not in depths or entry.parts not in self.hold_back
            ]
        root_fd = self._open_target()
        try:
            if not self.overwrite:
                self._refuse_conflicts(root_fd, plan)
            self._remove_extras(root_fd, None)
            self._execute(root_fd, plan)
            # Durable before we say "restored": the next step may be starting a database.
            _syncfs(root_fd)
        finally:
            os.close(root_fd)
        self.result.files -= self.result.files_unchanged
        self.result.duration = time.monotonic() - started
        return self.result

    # -- target ----------------------------------------------------------------------------

    def _open_target(self) -> int:
        if os.path.lexists(self.target) and not os.path.isdir(self.target):
            raise RestoreTargetError(f"restore target {self.target} exists and is not a directory")
        try:
            os.makedirs(self.target, mode=0o700, exist_ok=True)
            return os.open(self.target, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise RestoreTargetError(f"cannot use {self.target} as target: {exc.strerror}") from exc

    def _refuse_conflicts(self, root_fd: int, plan: list[PlannedEntry]) -> None:
        """Any planned path that exists in the target, but for a directory where the plan has
        one, is refused before anything is written. Looked up through directory descriptors
        (a path in a deep tree is longer than any system call takes)."""
        dirs = DirPath(root_fd, os.fsencode(self.target))
        open_entries: list[PlannedEntry | None] = [None]
        absent: PlannedEntry | None = None  # a directory missing from the target
        try:
            for entry in plan:
                if absent is not None and entry.depth > absent.depth:
                    continue  # below a missing directory: missing too
                absent = None
                while open_entries[-1] is not entry.parent:
                    if len(open_entries) == 1:
                        raise RestoreTargetError("restore plan is not depth-first")  # a bug
                    open_entries.pop()
                    self._leave(dirs)
                try:
                    st = os.stat(entry.name, dir_fd=dirs.fd, follow_symlinks=False)
                except FileNotFoundError:
                    absent = entry
                    continue
                except OSError as exc:
                    raise RestoreTargetError(
                        f"cannot look at {self._shown(entry)}: {exc.strerror}"
                    ) from exc
                if entry.node.type != DIR or not stat.S_ISDIR(st.st_mode):
                    raise RestoreTargetError(
                        f"{self._shown(entry)} already exists in the target; "
                        "pass --overwrite to replace existing files"
                    )
                try:
                    dirs.enter(entry.name)
                except OSError as exc:
                    raise RestoreTargetError(
                        f"cannot look into {self._shown(entry)}: {exc.strerror}"
                    ) from exc
                open_entries.append(entry)
        finally:
            dirs.close()

    def _leave(self, dirs: DirPath, finish: Callable[[int], None] | None = None) -> None:
        if not dirs.leave(finish):
            raise RestoreTargetError(
                f"{display_path(dirs.path())} was moved or replaced during the restore"
            )

    # -- writing ---------------------------------------------------------------------------

    def _execute(self, root_fd: int, plan: list[PlannedEntry]) -> None:
        """Directories are made by this thread in plan order; files are written by a few
        writer threads (creating a file costs a millisecond on a busy disk; one at a time,
        thousands of small files would dominate). Only the directories on the path to the
        current entry are open, at most DirPath's bound of them; one is finished (its files
        awaited, its metadata applied, its descriptor closed) when the plan leaves it. A
        directory whose descriptor is closed early, deep in a tree, has its writes awaited
        first: they write through that descriptor."""
        open_dirs = [_OpenDir(None)]
        dirs = DirPath(
            root_fd,
            os.fsencode(self.target),
            before_close=lambda depth: self._await(open_dirs[depth].writes),
        )
        slots = threading.BoundedSemaphore(WRITERS * 2)
        with (
            ThreadPoolExecutor(self.workers, "medvault-decode") as decoders,
            ThreadPoolExecutor(WRITERS, "medvault-write") as writers,
        ):
            try:
                for entry in plan:
                    while open_dirs[-1].entry is not entry.parent:
                        if len(open_dirs) == 1:
                            raise RestoreTargetError("restore plan is not depth-first")  # a bug
                        self._finish_dir(dirs, open_dirs.pop())
                    parent = open_dirs[-1]
                    node = entry.node
                    if node.type == DIR:
                        dirs.enter(entry.name, self._make_dir(dirs.fd, entry))
                        open_dirs.append(_OpenDir(entry))
                        self.result.dirs += 1
                    elif node.type == FILE:
                        slots.acquire()
                        job = writers.submit(self._write_file, dirs.fd, entry, decoders)
                        job.add_done_callback(lambda _job: slots.release())
                        parent.writes.append(job)
                        self.result.files += 1
                    elif node.type == SYMLINK:
                        self._make_symlink(dirs.fd, entry.name, node, entry)
                        self.result.symlinks += 1
                    else:
                        self.result.skipped.append(self._shown(entry))
                while len(open_dirs) > 1:
                    self._finish_dir(dirs, open_dirs.pop())
                self._await(open_dirs[0].writes)
            finally:
                for item in open_dirs:
                    for job in item.writes:
                        job.cancel()
                    futures_wait(item.writes)
                dirs.close()

    def _await(self, writes: list[Future[int]]) -> None:
        for job in writes:
            self.result.bytes_written += job.result()
        writes.clear()

    def _finish_dir(self, dirs: DirPath, item: _OpenDir) -> None:
        """Times and modes last: writing into a directory changes its mtime."""
        try:
            self._await(item.writes)
        finally:
            futures_wait(item.writes)
        assert item.entry is not None
        node = item.entry.node
        self._leave(dirs, lambda fd: self._apply_metadata(fd, node))

    def _shown(self, entry: PlannedEntry) -> str:
        return display_path(os.path.join(os.fsencode(self.target), *entry.parts))

    def _fail(self, entry: PlannedEntry, exc: OSError) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return TargetFull(
                f"no space left on the restore target while writing {self._shown(entry)}; "
                "free space and run the restore again with --overwrite"
            )
        return RestoreTargetError(f"cannot write {self._shown(entry)}: {exc.strerror}")

    def _remove_existing(self, parent_fd: int, name: bytes, entry: PlannedEntry) -> None:
        try:
            os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError as exc:
            if not self.delta:
                raise RestoreTargetError(
                    f"{self._shown(entry)} is a directory in the target; remove it first"
                ) from exc
            self._remove_tree(parent_fd, name, entry.parent)

    def _shown_dir(self, directory: PlannedEntry | None) -> bytes:
        return os.path.join(os.fsencode(self.target), *(directory.parts if directory else ()))

    def _remove_tree(self, dir_fd: int, name: bytes, parent: PlannedEntry | None) -> None:
        problems = remove_tree(dir_fd, name, self._shown_dir(parent))
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise RestoreTargetError(f"cannot remove {problems[0]}{more}")

    def _remove_extras(self, dir_fd: int, directory: PlannedEntry | None) -> None:
        """Delta: what the target holds in this directory and the snapshot does not.
        Overwrite: the unfinished files a killed restore left here."""
        if self._children is None:
            if self.overwrite and self.atomic:
                self._remove_unfinished(dir_fd, directory)
            return
        wanted = self._children.get(directory, set())
        for name in map(os.fsencode, os.listdir(dir_fd)):
            if name in wanted:
                continue
            try:
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                shown = display_path(os.path.join(self._shown_dir(directory), name))
                raise RestoreTargetError(f"cannot remove {shown}: {exc.strerror}") from exc
            self._remove_tree(dir_fd, name, directory)
            self.result.removed += 1

    def _remove_unfinished(self, dir_fd: int, directory: PlannedEntry | None) -> None:
        """Files a killed restore was writing under temporary names (partial copies). A
        restore run again with --overwrite finishes what it started, and removes these too:
        nothing else ever would."""
        for name in map(os.fsencode, os.listdir(dir_fd)):
            suffix = name.removeprefix(TEMP_PREFIX)
            if suffix == name or len(suffix) != 2 * TEMP_RANDOM or suffix.strip(HEX_DIGITS):
                continue
            try:
                if stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=dir_fd)
                    self.result.removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                shown = display_path(os.path.join(self._shown_dir(directory), name))
                raise RestoreTargetError(f"cannot remove {shown}: {exc.strerror}") from exc

    def _chunker(self) -> Chunker:
        chunker: Chunker | None = getattr(self._chunkers, "chunker", None)
        if chunker is None:
            chunker = Chunker(self.repo.config.chunker, self.repo.master.chunker_seed)
            self._chunkers.chunker = chunker
        return chunker

    def _keep_if_same(self, parent_fd: int, entry: PlannedEntry) -> bool:
        """Delta: the existing file already holds the snapshot's content (same blob ids,
        compared chunk by chunk). Its metadata is then applied, and nothing is written."""
        node = entry.node
        name = entry.name
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError:
            return False  # missing, a symlink (ELOOP) or unreadable: rewrite it
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                self._remove_tree(parent_fd, name, entry.parent)  # a directory, not a file
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_size != node.size:
                return False
            blobs = iter(node.content)
            with io.FileIO(fd, closefd=False) as stream:
                for chunk in self._chunker().chunks(stream):
                    if next(blobs, None) != self.repo.blob_id(chunk):
                        return False
            if next(blobs, None) is not None:
                return False
            self._apply_metadata(fd, node)
        finally:
            os.close(fd)
        with self._count_lock:
            self.result.files_unchanged += 1
        return True

    def _make_dir(self, parent_fd: int, entry: PlannedEntry) -> int:
        name = entry.name
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent_fd)
            try:
                fd = os.open(name, flags, dir_fd=parent_fd)
            except (NotADirectoryError, OSError) as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP) or not self.overwrite:
                    raise
                self._remove_existing(parent_fd, name, entry)  # a file or symlink in the way
                os.mkdir(name, 0o700, dir_fd=parent_fd)
                fd = os.open(name, flags, dir_fd=parent_fd)
        except OSError as exc:
            raise self._fail(entry, exc) from exc
        try:
            self._remove_extras(fd, entry)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _write_file(self, parent_fd: int, entry: PlannedEntry, decoders: ThreadPoolExecutor) -> int:
        """Write one file under a temporary name and rename it into place (or, not atomic,
        in place). Its blobs are decoded here when there is one, on the shared decoder pool
        when there are more."""
        node = entry.node
        name = entry.name
        if self.delta and self._keep_if_same(parent_fd, entry):
            return 0
        if len(node.content) > 1:
            data: Iterator[bytes] = ordered_prefetch(
                decoders, self.repo.load_blob, node.content, max(PREFETCH_BLOBS, self.workers)
            )
        else:
            data = (self.repo.load_blob(blob) for blob in node.content)
        path = TEMP_PREFIX + secrets.token_hex(TEMP_RANDOM).encode() if self.atomic else name
        written = 0
        try:
            fd = self._create(parent_fd, path, entry)
            try:
                flushed = 0
                for chunk in data:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    written += len(chunk)
                    if written - flushed >= WRITEBACK_EVERY:
                        _start_writeback(fd, flushed, written - flushed)
                        flushed = written
                    if self._on_progress is not None:
                        self._on_progress(len(chunk))
                if written != node.size:
                    raise IntegrityError(
                        f"{self._shown(entry)}: restored {written} bytes, snapshot says {node.size}"
                    )
                _start_writeback(fd, flushed, written - flushed)
                self._apply_metadata(fd, node)
            finally:
                os.close(fd)
            if self.atomic:
                os.rename(path, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            faults.point("restore.file-written")
        except BaseException as exc:
            if self.atomic:
                with contextlib.suppress(OSError):
                    os.unlink(path, dir_fd=parent_fd)
            if isinstance(exc, OSError):
                raise self._fail(entry, exc) from exc
            raise
        finally:
            if isinstance(data, Generator):
                data.close()
        return written

    def _create(self, parent_fd: int, path: bytes, entry: PlannedEntry) -> int:
        if self.atomic:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(path, flags, 0o600, dir_fd=parent_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o600, dir_fd=parent_fd)
        except OSError as exc:
            # A symlink (ELOOP) or directory (EISDIR) where the file belongs.
            if exc.errno not in (errno.ELOOP, errno.EISDIR) or not self.overwrite:
                raise
        self._remove_existing(parent_fd, path, entry)
        return os.open(path, flags, 0o600, dir_fd=parent_fd)

    def _make_symlink(self, parent_fd: int, name: bytes, node: Node, entry: PlannedEntry) -> None:
        try:
            try:
                os.symlink(node.target, name, dir_fd=parent_fd)
            except FileExistsError:
                if not self.overwrite:
                    raise
                self._remove_existing(parent_fd, name, entry)
                os.symlink(node.target, name, dir_fd=parent_fd)
            if self._chown:
                os.chown(name, node.uid, node.gid, dir_fd=parent_fd, follow_symlinks=False)
            os.utime(
                name,
                ns=(node.mtime_ns, node.mtime_ns),
                dir_fd=parent_fd,
                follow_symlinks=False,
            )
        except OSError as exc:
            raise self._fail(entry, exc) from exc

    def _apply_metadata(self, fd: int, node: Node) -> None:
        if self._chown:
            os.fchown(fd, node.uid, node.gid)
        os.fchmod(fd, self._mode(node))
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))

    def _mode(self, node: Node) -> int:
        """A file's setuid and setgid bits are cleared unless asked for: whoever could write
        the snapshot (any client holding the key) could otherwise plant a setuid-root program
        that a later restore as root installs. Directories keep theirs (setgid on a shared
        folder only passes its group on) and the sticky bit stays everywhere."""
        if self.keep_setuid or node.type != FILE or not node.mode & SETID_BITS:
            return node.mode
        with self._count_lock:
            self.result.setid_cleared += 1
        return node.mode & ~SETID_BITS


def restore_files(
    repo: Repository,
    snapshot: Snapshot,
    target: str,
    *,
    includes: Iterable[str] = (),
    overwrite: bool = False,
    delta: bool = False,
    root: str = "",
    kinds: tuple[str, ...] = ("files",),
    on_progress: Callable[[int], None] | None = None,
    atomic: bool = True,
    hold_back: Iterable[str] = (),
    keep_setuid: bool = False,
) -> RestoreResult:
    """Restore `snapshot` (or its directory `root`) into `target`; see FileRestore."""
    return FileRestore(
        repo,
        snapshot,
        target,
        includes=includes,
        overwrite=overwrite,
        delta=delta,
        root=root,
        kinds=kinds,
        on_progress=on_progress,
        atomic=atomic,
        hold_back=hold_back,
        keep_setuid=keep_setuid,
    ).run()


__all__ = ["RestoreResult", "UnsafeSnapshot", "plan_restore", "restore_files"]
