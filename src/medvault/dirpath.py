"""Walking and changing directory trees of any depth through directory descriptors.

Anyone who can write into a backed-up folder can make a tree thousands of levels deep. A path
10,000 directories deep is far longer than PATH_MAX (4,096 bytes), so no system call may be
given a whole path; and a recursive walk over it overflows Python's stack. Trees are therefore
walked with explicit stacks, and every name is opened relative to its parent's descriptor
(openat and friends, `dir_fd=`).

Holding one descriptor per level would need 10,000 of them, beyond the usual limit of 1,024,
so `DirPath` keeps only the deepest `KEEP_OPEN` levels of the current path open. Going back up
to a level whose descriptor was closed, it opens `..` of the child it leaves and checks that
this is the directory it came through (same device and inode, recorded on the way down); when
it is not (the child was moved away meanwhile) or `..` cannot be searched, it walks down again
by name from the deepest level still open, checking each level the same way. Each level is
thus reopened at most once per visit, and a walk costs a bounded number of descriptors
whatever the depth.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

KEEP_OPEN = 32  # descriptors a DirPath holds below its base, whatever the depth
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Level:
    name: bytes
    dev: int
    ino: int
    fd: int | None


class DirPath:
    """The directories from a base directory down to the current one, the deepest few open.

    The base descriptor belongs to the caller and is never closed here; every other descriptor
    belongs to the DirPath. `before_close(depth)` runs before the descriptor of an ancestor
    of the current directory is closed to stay within `KEEP_OPEN` (a caller whose threads
    still write through it waits for them there). A level whose directory cannot be reached
    again on the way up is *lost*: `fd` then raises, and `leave` reports it."""

    def __init__(
        self,
        base_fd: int,
        base: bytes,
        *,
        before_close: Callable[[int], None] | None = None,
    ) -> None:
        st = os.fstat(base_fd)
        self._levels = [_Level(b"", st.st_dev, st.st_ino, base_fd)]
        self._base = base
        self._lowest_held = 1  # levels from here to the top hold descriptors (and level 0)
        self._before_close = before_close

    @property
    def depth(self) -> int:
        return len(self._levels) - 1

    @property
    def fd(self) -> int:
        fd = self._levels[-1].fd
        if fd is None:
            raise OSError(errno.ESTALE, "moved or replaced while in use", self.path())
        return fd

    @property
    def lost(self) -> bool:
        return self._levels[-1].fd is None

    @property
    def name(self) -> bytes:
        return self._levels[-1].name

    def path(self, *more: bytes) -> bytes:
        """The current directory's path (joined with `more`), for messages and matching only:
        it may be too long for any system call."""
        return os.path.join(self._base, *(level.name for level in self._levels[1:]), *more)

    def enter(self, name: bytes, fd: int | None = None) -> int:
        """Descend into directory `name` of the current one (opened here, or `fd` when the
        caller opened it already; its descriptor is then the DirPath's)."""
        if fd is None:
            fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        self._levels.append(_Level(name, st.st_dev, st.st_ino, fd))
        self._bound()
        return fd

    def leave(self, finish: Callable[[int], None] | None = None) -> bool:
        """Go back up one level. The parent is made reachable first, then `finish` runs on the
        directory being left (its metadata can be applied now, even a mode that takes away
        our own search permission), then its descriptor is closed. False when the parent is
        lost."""
        if len(self._levels) == 1:
            raise ValueError("already at the base directory")
        child = self._levels.pop()
        try:
            if self._levels[-1].fd is None:
                self._reopen_top(child.fd)
            if finish is not None and child.fd is not None:
                finish(child.fd)
        finally:
            if child.fd is not None:
                os.close(child.fd)
            self._lowest_held = min(self._lowest_held, len(self._levels))
        return self._levels[-1].fd is not None

    def close(self) -> None:
        """Close every descriptor the DirPath holds (the base stays open)."""
        for level in self._levels[1:]:
            if level.fd is not None:
                os.close(level.fd)
                level.fd = None
        del self._levels[1:]
        self._lowest_held = 1

    def _bound(self) -> None:
        while len(self._levels) - self._lowest_held > KEEP_OPEN:
            level = self._levels[self._lowest_held]
            if level.fd is not None:
                if self._before_close is not None:
                    self._before_close(self._lowest_held)
                os.close(level.fd)
                level.fd = None
            self._lowest_held += 1

    def _reopen_top(self, child_fd: int | None) -> None:
        """Reopen the current level, whose descriptor was closed: as `..` of the child just
        left when that is the same directory, else by name from the deepest open level."""
        top = self._levels[-1]
        if child_fd is not None:
            try:
                fd = os.open(b"..", DIR_FLAGS, dir_fd=child_fd)
            except OSError:
                fd = None
            if fd is not None:
                if self._same(fd, top):
                    top.fd = fd
                    self._lowest_held = len(self._levels) - 1
                    return
                os.close(fd)
        held = max(i for i, level in enumerate(self._levels) if level.fd is not None)
        opened: list[int] = []
        try:
            for index in range(held + 1, len(self._levels)):
                level = self._levels[index]
                parent = self._levels[index - 1].fd
                assert parent is not None
                fd = os.open(level.name, DIR_FLAGS, dir_fd=parent)
                level.fd = fd
                opened.append(index)
                if not self._same(fd, level):
                    raise OSError(errno.ESTALE, "moved or replaced")
        except OSError:
            for index in opened:
                fd_to_close = self._levels[index].fd
                if fd_to_close is not None:
                    os.close(fd_to_close)
                self._levels[index].fd = None
            return  # the top stays lost
        self._lowest_held = held + 1
        self._bound()

    @staticmethod
    def _same(fd: int, level: _Level) -> bool:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (level.dev, level.ino)


def walk(top: str | bytes) -> Iterator[tuple[DirPath, bytes, os.stat_result]]:
    """Every entry below directory `top`: (the DirPath of its directory, its name, its lstat),
    each directory's entries in name order before what lies below them. Symlinks are not
    followed. Unreadable directories raise OSError."""
    base_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dirs = DirPath(base_fd, os.fsencode(top))
    try:
        pending = [_subdirectories_last(dirs)]
        while pending:
            if not pending[-1]:
                pending.pop()
                if pending and not dirs.leave():
                    raise OSError(errno.ESTALE, "moved or replaced while read", dirs.path())
                continue
            name, st, below = pending[-1].pop()
            if below:
                dirs.enter(name)
                pending.append(_subdirectories_last(dirs))
            else:
                yield dirs, name, st
    finally:
        dirs.close()
        os.close(base_fd)


def _subdirectories_last(dirs: DirPath) -> list[tuple[bytes, os.stat_result, bool]]:
    """The current directory's entries as a stack to pop: each entry, then (below them all)
    the subdirectories to descend into, every one in name order."""
    entries = []
    for name in sorted(os.fsencode(n) for n in os.listdir(dirs.fd)):
        entries.append((name, os.stat(name, dir_fd=dirs.fd, follow_symlinks=False)))
    work = [(name, st, True) for name, st in entries if stat.S_ISDIR(st.st_mode)]
    work += [(name, st, False) for name, st in entries]
    work.reverse()
    return work


def remove_tree(parent_fd: int, name: bytes, parent: bytes) -> list[str]:
    """Remove `name` in the directory `parent_fd` (shown as `parent`), and all below it if
    it is a directory. Errors are never ignored: whatever cannot be removed is returned as
    "PATH: reason" (an empty list means it is gone). Directories of ours that lack owner
    read, write or search permission (a restored 0555 directory) get it back first, so
    the owner can always remove what it restored."""
    problems: list[str] = []
    dirs = DirPath(parent_fd, parent)
    try:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return []
        if not stat.S_ISDIR(st.st_mode):
            _unlink(dirs, name, problems)
            return problems
        if not _enter_for_removal(dirs, name, st, problems):
            return problems
        before = len(problems)
        subdirs = [_clear_files(dirs, problems)]
        kept = [len(problems) > before]  # something inside stays: the directory stays too
        while subdirs:
            if subdirs[-1]:
                sub, sub_st = subdirs[-1].pop()
                before = len(problems)
                if _enter_for_removal(dirs, sub, sub_st, problems):
                    subdirs.append(_clear_files(dirs, problems))
                    kept.append(len(problems) > before)
                else:
                    kept[-1] = True
                continue
            subdirs.pop()
            stays = kept.pop()
            done = dirs.name
            if not dirs.leave():
                problems.append(f"{_shown(dirs.path())}: moved or replaced during removal")
                return problems
            if not stays:
                try:
                    os.rmdir(done, dir_fd=dirs.fd)
                except OSError as exc:
                    problems.append(f"{_shown(dirs.path(done))}: {exc.strerror}")
                    stays = True
            if stays and kept:
                kept[-1] = True
    finally:
        dirs.close()
    return problems


def _shown(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def _unlink(dirs: DirPath, name: bytes, problems: list[str]) -> bool:
    try:
        os.unlink(name, dir_fd=dirs.fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        problems.append(f"{_shown(dirs.path(name))}: {exc.strerror}")
        return False
    return True


def _enter_for_removal(dirs: DirPath, name: bytes, st: os.stat_result, problems: list[str]) -> bool:
    """Enter a directory to empty it, first giving its owner (us) read, write and search
    permission when it lacks them."""
    try:
        if stat.S_IMODE(st.st_mode) & 0o700 != 0o700 and st.st_uid == os.geteuid():
            # Through an O_PATH descriptor, which needs no permission on the directory
            # itself and cannot be redirected by a symlink swapped in after the lstat.
            handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=dirs.fd)
            try:
                os.chmod(f"/proc/self/fd/{handle}", stat.S_IMODE(st.st_mode) | 0o700)
            finally:
                os.close(handle)
        dirs.enter(name)
    except OSError as exc:
        problems.append(f"{_shown(dirs.path(name))}: {exc.strerror}")
        return False
    return True


def _clear_files(dirs: DirPath, problems: list[str]) -> list[tuple[bytes, os.stat_result]]:
    """Unlink everything in the current directory but its subdirectories; those are
    returned to be emptied next."""
    subdirs: list[tuple[bytes, os.stat_result]] = []
    try:
        names = [os.fsencode(n) for n in os.listdir(dirs.fd)]
    except OSError as exc:
        problems.append(f"{_shown(dirs.path())}: {exc.strerror}")
        return subdirs
    for name in names:
        try:
            st = os.stat(name, dir_fd=dirs.fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{_shown(dirs.path(name))}: {exc.strerror}")
            continue
        if stat.S_ISDIR(st.st_mode):
            subdirs.append((name, st))
        else:
            _unlink(dirs, name, problems)
    return subdirs
