"""Run records on their way to the catalog: the spool a shell's session writes them into, and
the ingest that moves them into the catalog when one is opened.

Writing a record is one small JSON file in `<state dir>/spool/` (written under a temporary
name, then renamed: a file there is whole, and a process that dies right after has lost
nothing). It costs a fraction of a millisecond and imports nothing beyond the standard
library: SQLAlchemy costs more to import than a wal-push takes, so the catalog is opened, and
the spool emptied into it, only by what queries it (`runs`, `stats`, `catalog rebuild`). A
record in the spool is not yet in `runs` of another host sharing a PostgreSQL catalog; the
repository's audit chains are the record of truth either way.

No fsync: the rename is atomic for a process that dies; a record lost to a power cut is one the
repository's audit chain still holds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medvault.catalog.store import Catalog
    from medvault.service.runs import RunRecord
    from medvault.service.session import Session

CATALOG_FILE = "catalog.db"
SPOOL_DIR = "spool"
SUFFIX = ".json"
# A temporary file older than this was left by a process that died while writing it.
_STALE_TEMPORARY_S = 3600.0
_INGEST_BATCH = 2000


def spool_dir(state_dir: Path) -> Path:
    return state_dir / SPOOL_DIR


def catalog_url(session: Session) -> str | None:
    """`[catalog] url` of medvault.toml, else SQLite in the session's state directory; None
    when there is neither (a shell that keeps no state)."""
    if session.configured:
        configured = session.settings.catalog.url
        if configured:
            return configured
    if session.state_dir is None:
        return None
    from medvault.statedir import ensure_state_dir

    path = ensure_state_dir(session.state_dir) / CATALOG_FILE
    # Made private before SQLite makes it (it names who restored what, and when).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    return f"sqlite:///{path}"


class SpoolObserver:
    """Spools every run record of a session (a session without a state directory keeps
    none). `only_failures`: wal-push and wal-fetch, whose successes (one per 16 MiB segment)
    are counted elsewhere and cost nothing here."""

    __slots__ = ("_directory", "only_failures", "session")

    def __init__(self, session: Session, *, only_failures: bool = False) -> None:
        self.session = session
        self.only_failures = only_failures
        self._directory: Path | None = None

    def run_ended(self, record: RunRecord) -> None:
        if self.only_failures and record.status == "ok":
            return
        state_dir = self.session.state_dir
        if state_dir is None:
            return
        if self._directory is None:
            directory = spool_dir(state_dir)
            # Private to its owner, like the state directory (the records name who restored
            # what, and when).
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
            self._directory = directory
        spool(self._directory, record._asdict())


def spool(directory: Path, record: dict[str, Any]) -> Path:
    """Write one record as `<run_id>.json` in `directory`, whole or not at all."""
    import json

    name = f"{record['run_id']}{SUFFIX}"
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    data = json.dumps(record, separators=(",", ":")).encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    final = directory / name
    os.rename(temporary, final)
    return final


class IngestResult:
    """What an ingest did: records moved into the catalog, files it could not read (renamed
    `*.bad`, kept for a person to look at)."""

    __slots__ = ("ingested", "unreadable")

    def __init__(self) -> None:
        self.ingested = 0
        self.unreadable: list[str] = []


def ingest_spool(catalog: Catalog, state_dir: Path | None) -> IngestResult:
    """Move the spooled records into the catalog: insert (a record already there, by run_id,
    is left as it is), then delete their files. A process that dies in between leaves files
    whose second insert changes nothing; two ingests at once do the same."""
    import json

    from medvault.catalog.store import row_of

    result = IngestResult()
    if state_dir is None:
        return result
    directory = spool_dir(state_dir)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return result
    ready = []
    now = time.time()
    for entry in entries:
        if entry.name.startswith("."):
            _remove_if_stale(entry, now)
        elif entry.name.endswith(SUFFIX):
            ready.append(Path(entry.path))
    for start in range(0, len(ready), _INGEST_BATCH):
        batch = ready[start : start + _INGEST_BATCH]
        records, read = [], []
        for path in batch:
            try:
                record = json.loads(path.read_bytes())
                if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
                    raise ValueError("not a run record")
                row_of(record)  # a record the catalog cannot take must not hold up the rest
            except FileNotFoundError:  # another ingest took it
                continue
            except (ValueError, KeyError, TypeError, AttributeError):
                path.rename(path.with_suffix(".bad"))
                result.unreadable.append(path.name)
                continue
            records.append(record)
            read.append(path)
        catalog.add(records)
        for path in read:
            path.unlink(missing_ok=True)
        result.ingested += len(records)
    return result


def _remove_if_stale(entry: os.DirEntry[str], now: float) -> None:
    if not entry.name.endswith(".tmp"):
        return
    try:
        if now - entry.stat().st_mtime > _STALE_TEMPORARY_S:
            os.unlink(entry.path)
    except FileNotFoundError:
        pass
