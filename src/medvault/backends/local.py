"""A repository in a local directory.

Writes go to a hidden temporary file in the destination directory, are fsynced, renamed into
place and the directory is fsynced, so an object is either absent or complete and durable.

Directories are 0700 and files 0600: the repository is its owner's alone. A repository
shared with a group (`init --group NAME`, for a backup operators' group that reads it) has
0750 directories with the setgid bit, so everything made in them belongs to that group, and
0640 files. The setgid bit on the repository's own directory is what says so, for every
later command, whatever the umask of the process writing.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from medvault.backends.base import Backend, ObjectInfo, is_object_name, validate_name
from medvault.errors import (
    BackendError,
    NotSupported,
    ObjectExists,
    ObjectLocked,
    ObjectNotFound,
    RepositoryExists,
    UsageError,
)

TEMP_PREFIX = ".tmp-"
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
SHARED_DIR, SHARED_FILE = 0o2750, 0o640
_TOP_LEVEL = ("data", "index", "snapshots", "keys", "locks")
# Writers coordinate through these; an append-only repository still lets them come and go.
MUTABLE_PREFIXES = ("locks/",)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend(Backend):
    """`append_only` refuses every delete and overwrite of backup objects: a host that may
    add backups but must never destroy them (the protection is medvault's own; pair it with
    file-system permissions that keep other writers out)."""

    def __init__(self, root: str | os.PathLike[str], *, append_only: bool = False) -> None:
        self.root = Path(root).absolute()
        self.url = str(self.root)
        self.local_path = str(self.root)
        self.append_only = append_only
        self.group: int | None = None  # set by share_with_group before create
        self._shared: bool | None = None  # read from the root's setgid bit on first write

    def share_with_group(self, name: str) -> None:
        """Make `create` open the repository to group `name` (read-only for its members)."""
        import grp

        try:
            self.group = grp.getgrnam(name).gr_gid
        except KeyError:
            raise UsageError(f"--group {name}: no such group on this host") from None

    @property
    def shared(self) -> bool:
        if self._shared is None:
            try:
                self._shared = bool(os.stat(self.root).st_mode & stat.S_ISGID)
            except OSError:
                self._shared = False
        return self._shared

    def _make_dir(self, path: Path) -> None:
        """A directory with the repository's mode (set explicitly: the umask may differ).
        One another writer made first is left as it is."""
        try:
            path.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            return
        os.chmod(path, SHARED_DIR if self.shared else PRIVATE_DIR)

    @property
    def immutable(self) -> bool:
        return self.append_only

    def _refuse_if_append_only(self, name: str, action: str) -> None:
        if self.append_only and not name.startswith(MUTABLE_PREFIXES):
            raise ObjectLocked(f"refusing to {action} {name}: the repository is append-only")

    def _path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def _fail(self, action: str, name: str, exc: OSError) -> BackendError:
        if exc.errno == errno.ENOSPC:
            return BackendError(f"repository disk {self.root} is full: cannot {action} {name}")
        return BackendError(f"cannot {action} {name} in {self.root}: {exc.strerror}")

    def create(self) -> None:
        if self._holds_files():
            raise RepositoryExists(f"{self.root} already exists and is not empty")
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self.root.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            if self.group is not None:
                os.chown(self.root, -1, self.group)
            os.chmod(self.root, PRIVATE_DIR if self.group is None else SHARED_DIR)
            self._shared = self.group is not None
            for sub in _TOP_LEVEL:
                self._make_dir(self.root / sub)
            # All 256 pack folders now, so that no later write depends on a new directory
            # entry reaching the disk.
            for prefix in range(256):
                self._make_dir(self.root / "data" / f"{prefix:02x}")
            _fsync_dir(self.root / "data")
            _fsync_dir(self.root)
        except OSError as exc:
            raise BackendError(f"cannot create repository at {self.root}: {exc.strerror}") from exc

    def _holds_files(self) -> bool:
        """Empty folders do not count: an init killed before its first object leaves them."""
        for folder, subfolders, files in os.walk(self.root):
            if files or any(os.path.islink(os.path.join(folder, d)) for d in subfolders):
                return True
        return False

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def load(
        self, name: str, offset: int = 0, length: int | None = None, *, exact: bool = True
    ) -> bytes:
        # One open per read: a shared descriptor cache races with eviction and deletion
        # (a reused descriptor number would return another pack's bytes).
        try:
            # A string path, not a Path: reads of many small records spend more on building
            # Path objects than on the read itself.
            fd = os.open(f"{self.local_path}/{validate_name(name)}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if length is None:
                    length = os.fstat(fd).st_size - offset
                data = os.pread(fd, length, offset)
            finally:
                os.close(fd)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"object {name} is missing from {self.root}") from exc
        except OSError as exc:
            raise self._fail("read", name, exc) from exc
        if exact and len(data) != length:
            raise BackendError(f"object {name} is shorter than expected ({len(data)} < {length})")
        return data

    def store(
        self,
        name: str,
        data: bytes,
        *,
        overwrite: bool = False,
        retain_until: dt.datetime | None = None,
    ) -> None:
        path = self._path(name)
        if retain_until is not None and not name.startswith(MUTABLE_PREFIXES):
            raise NotSupported(self._no_object_lock())
        if not overwrite and path.exists():
            raise ObjectExists(f"object {name} already exists")
        if overwrite and path.exists():
            self._refuse_if_append_only(name, "overwrite")
        tmp = path.parent / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}"
        try:
            self._ensure_dir(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
            try:
                if self.shared:
                    os.fchmod(fd, SHARED_FILE)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if overwrite:
                os.replace(tmp, path)
            else:
                # link() fails if the name exists: two writers never overwrite each other.
                try:
                    os.link(tmp, path)
                except FileExistsError as exc:
                    raise ObjectExists(f"object {name} already exists") from exc
                finally:
                    os.unlink(tmp)
            _fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._fail("write", name, exc) from exc

    def _ensure_dir(self, folder: Path) -> None:
        if folder.is_dir():
            return
        self._ensure_dir(folder.parent)
        self._make_dir(folder)
        _fsync_dir(folder.parent)

    def delete(self, name: str) -> None:
        path = self._path(name)
        self._refuse_if_append_only(name, "delete")
        try:
            path.unlink()
            _fsync_dir(path.parent)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"object {name} is missing from {self.root}") from exc
        except OSError as exc:
            raise self._fail("delete", name, exc) from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix)
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for filename in filenames:
                # Hidden names are writes in progress; other names no object can have (a
                # file planted as "snapshots/a b") are not objects either: a listing never
                # yields a name that load() would refuse.
                if filename.startswith(".") or not is_object_name(f"{rel}/{filename}"):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, filename))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(f"{rel}/{filename}", st.st_size, st.st_mtime)
