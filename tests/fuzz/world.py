"""What the fuzz harnesses share: a real repository on disk, opened with a key file (no KDF
to pay for), its keys, and a way to plant an object in it the way anyone with write access
to the store could.

One world per process, made on first use and removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medvault.backends.local import LocalBackend
from medvault.repository.crypto import DataKey
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository
from medvault.repository.wal import WalArchive

SOURCE = "db1"


@dataclass(frozen=True)
class World:
    root: Path
    repo: Repository
    keyfile_secret: bytes
    archive: WalArchive

    @property
    def kek(self) -> DataKey:
        return self.repo.master.current

    @property
    def keks(self) -> dict[bytes, DataKey]:
        return self.repo.master.keks

    @contextmanager
    def planted(self, name: str, data: bytes) -> Iterator[Path]:
        """`data` stored as object `name` for the duration, written straight into the
        repository's directory (no fsync: nothing here needs to survive a crash)."""
        path = self.root / name
        made: list[Path] = []
        folder = path.parent
        while not folder.exists():
            made.append(folder)
            folder = folder.parent
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)
            for folder in made:
                folder.rmdir()
            self.repo.warnings.clear()


@functools.cache
def world() -> World:
    root = Path(tempfile.mkdtemp(prefix="medvault-fuzz-")) / "repo"
    atexit.register(shutil.rmtree, root.parent, ignore_errors=True)
    secret = os.urandom(32)
    repo = Repository.init(LocalBackend(root), Credential(keyfile_secret=secret))
    return World(root, repo, secret, WalArchive(repo, SOURCE, compress_threads=0))
