"""PostgreSQL's WAL, as the archive sees it: file names, LSN arithmetic, timeline history,
gaps in the chain, pushing and fetching files, and the asynchronous push spool.

Imports stay light (no repository engine, no psycopg at import time): `wal-push` runs once
per segment and must start fast; a spooled segment is acknowledged before anything heavy
is loaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medvault import faults
from medvault.errors import (
    IntegrityError,
    MedvaultError,
    RestoreTargetError,
    SourceUnavailable,
    UsageError,
    WalConflict,
)

if TYPE_CHECKING:
    from medvault.repository.repo import Repository
    from medvault.repository.wal import WalArchive

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
# \Z, not $: a name that ends in a newline is no WAL file name.
SEGMENT = re.compile(r"^[0-9A-F]{24}\Z")
PARTIAL = re.compile(r"^[0-9A-F]{24}\.partial\Z")
BACKUP_LABEL = re.compile(r"^[0-9A-F]{24}\.[0-9A-F]{8}\.backup\Z")
HISTORY = re.compile(r"^[0-9A-F]{8}\.history\Z")
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_TIMELINE = re.compile(r"[0-9]{1,10}")
MAX_TIMELINE = 0xFFFFFFFF
SPOOL_DIR_NAME = "medvault-spool"
ASYNC_BATCH = 64  # files per asynchronous call; the rest wait for the next call
ASYNC_WORKERS = 4

# XLogLongPageHeaderData (access/xlog_internal.h), little-endian on every supported platform
XLP_LONG_HEADER = 0x0002
_OFF_INFO, _OFF_PAGEADDR, _OFF_SYSID, _OFF_SEG_SIZE = 2, 8, 24, 32
LONG_HEADER_LEN = 40


# -- LSNs and names --------------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> an integer position."""
    # A pattern, not int(..., 16) alone: that also takes "-1", "+1" and "1_0".
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"{text!r} is not an LSN (expected the form 16/B374D848)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _per_xlogid(segment_size: int) -> int:
    if segment_size <= 0 or segment_size & (segment_size - 1) or segment_size > 1 << 30:
        raise UsageError(f"{segment_size} is not a WAL segment size (a power of 2, <= 1 GiB)")
    return 0x100000000 // segment_size


def _name_of(timeline: int, segno: int, segment_size: int) -> str:
    per = _per_xlogid(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def segment_name(timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The segment holding `lsn` (XLByteToSeg), as PostgreSQL names it."""
    return _name_of(timeline, lsn // segment_size, segment_size)


def segment_number(name: str, segment_size: int) -> int:
    if not SEGMENT.match(name[:24]):
        raise UsageError(f"{name!r} is not a WAL segment name")
    return int(name[8:16], 16) * _per_xlogid(segment_size) + int(name[16:24], 16)


def segment_start_lsn(name: str, segment_size: int) -> int:
    return segment_number(name, segment_size) * segment_size


def segment_timeline(name: str) -> int:
    return int(name[:8], 16)


def is_archivable(name: str) -> bool:
    return any(p.match(name) for p in (SEGMENT, PARTIAL, BACKUP_LABEL, HISTORY))


def check_name(name: str) -> str:
    if not is_archivable(name):
        raise UsageError(
            f"{name!r} is not a WAL file name (a segment, .partial, .backup or .history file)"
        )
    return name


def segments_between(timeline: int, start_lsn: int, stop_lsn: int, segment_size: int) -> list[str]:
    """Segments of one timeline from the one holding start_lsn to the one holding the last
    byte before stop_lsn (pg_walfile_name's rule for an end position such as
    pg_backup_stop's lsn); at least the first."""
    first = start_lsn // segment_size
    last = max(first, (stop_lsn - 1) // segment_size)
    return [_name_of(timeline, segno, segment_size) for segno in range(first, last + 1)]


# -- timelines ---------------------------------------------------------------------------------


def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file: [(parent timeline, LSN where it ended)], oldest first."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 2)
        try:
            if len(fields) < 2 or not _TIMELINE.fullmatch(fields[0]):
                raise ValueError(line)
            timeline = int(fields[0])
            if not 1 <= timeline <= MAX_TIMELINE:
                raise ValueError(line)
            entries.append((timeline, parse_lsn(fields[1])))
        except (ValueError, UsageError):
            raise IntegrityError(f"timeline history line {number} is malformed: {line!r}") from None
    return entries


@dataclass(frozen=True)
class Period:
    """A stretch of WAL that recovery reads from one timeline: [begin, end)."""

    timeline: int
    begin: int
    end: int | None  # None: the target timeline, open-ended


def timeline_periods(archive: WalArchive, timeline: int) -> tuple[list[Period], list[str]]:
    """How `timeline` came to be, from its archived history file; and missing files."""
    if timeline <= 1:
        return [Period(timeline, 0, None)], []
    raw = archive.fetch(history_name(timeline))
    if raw is None:
        return [Period(timeline, 0, None)], [history_name(timeline)]
    periods, begin = [], 0
    for parent, switch in parse_history(raw.decode("ascii", "replace")):
        periods.append(Period(parent, begin, switch))
        begin = switch
    periods.append(Period(timeline, begin, None))
    return periods, []


def period_segments(period: Period, segment_size: int) -> tuple[int, int | None]:
    """Segment numbers recovery reads from the period's timeline: a timeline switched to at
    LSN L supplies the segment holding L onwards (PostgreSQL copies that segment's start
    into the new timeline's file), its parent everything before."""
    first = period.begin // segment_size
    last = None if period.end is None else period.end // segment_size - 1
    return first, last


def missing_segments(
    archive: WalArchive,
    timeline: int,
    start_lsn: int,
    stop_lsn: int | None,
    segment_size: int,
) -> list[str]:
    """Files recovery needs, and the archive lacks, to replay from start_lsn to stop_lsn on
    `timeline` (up to its newest archived segment when stop_lsn is None), following the
    timeline switches in the archived history files."""
    periods, missing = timeline_periods(archive, timeline)
    first_needed = start_lsn // segment_size
    archived: dict[int, set[int]] = {}
    for period in periods:
        archived[period.timeline] = {
            segment_number(n, segment_size)
            for n in archive.names(period.timeline)
            if SEGMENT.match(n)
        }
    if stop_lsn is None:
        last_needed = first_needed
        for period in periods:
            low, high = period_segments(period, segment_size)
            inside = [
                s for s in archived[period.timeline] if s >= low and (high is None or s <= high)
            ]
            last_needed = max([last_needed, *inside])
    else:
        last_needed = max(first_needed, (stop_lsn - 1) // segment_size)
    for period in periods:
        low, high = period_segments(period, segment_size)
        low = max(low, first_needed)
        high = last_needed if high is None else min(high, last_needed)
        for segno in range(low, high + 1):
            if segno not in archived[period.timeline]:
                missing.append(_name_of(period.timeline, segno, segment_size))
    return missing


def wait_for_segments(archive: WalArchive, names: list[str], timeout_s: float) -> list[str]:
    """Poll until every name is archived or the time is up; the names still missing."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        timelines = {int(n[:8], 16) for n in names}
        present = {n for t in timelines for n in archive.names(t)}
        missing = [n for n in names if n not in present]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)


# -- one file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentHeader:
    system_identifier: str
    segment_size: int
    page_address: int


def read_segment_header(name: str, data: bytes) -> SegmentHeader:
    """The long page header that opens every segment: whose cluster it is, and where."""
    if len(data) < LONG_HEADER_LEN:
        raise IntegrityError(f"{name} is too short to be a WAL segment ({len(data)} bytes)")
    info = int.from_bytes(data[_OFF_INFO : _OFF_INFO + 2], "little")
    if not info & XLP_LONG_HEADER:
        raise IntegrityError(f"{name} does not start with a WAL segment header")
    header = SegmentHeader(
        system_identifier=str(int.from_bytes(data[_OFF_SYSID : _OFF_SYSID + 8], "little")),
        segment_size=int.from_bytes(data[_OFF_SEG_SIZE : _OFF_SEG_SIZE + 4], "little"),
        page_address=int.from_bytes(data[_OFF_PAGEADDR : _OFF_PAGEADDR + 8], "little"),
    )
    try:
        start = segment_start_lsn(name, header.segment_size)
    except UsageError:
        raise IntegrityError(
            f"{name} has a damaged header (segment size {header.segment_size})"
        ) from None
    if header.page_address != start or len(data) != header.segment_size:
        raise IntegrityError(
            f"{name} is not the segment its name says (it starts at "
            f"{format_lsn(header.page_address)}, {len(data)} bytes; expected {format_lsn(start)}, "
            f"{header.segment_size} bytes)"
        )
    return header


def check_cluster(
    archive: WalArchive,
    name: str,
    header: SegmentHeader,
    expected_system_identifier: str | None = None,
) -> None:
    """Refuse a segment of another cluster; the first segment pushed claims the archive."""
    ours = header.system_identifier
    if expected_system_identifier is not None and ours != expected_system_identifier:
        raise WalConflict(
            f"segment {name} comes from cluster {ours}, not from cluster "
            f"{expected_system_identifier} being backed up as source {archive.source}"
        )
    held = archive.cluster() or archive.record_cluster(ours, header.segment_size)
    if held.system_identifier != ours:
        raise WalConflict(
            f"segment {name} comes from cluster {ours} but the archive of source "
            f"{archive.source} holds cluster {held.system_identifier}; another cluster's "
            "archive_command points here: give that cluster its own source name"
        )
    if held.segment_size != header.segment_size:
        raise WalConflict(
            f"segment {name} is {header.segment_size} bytes but the archive of source "
            f"{archive.source} holds {held.segment_size}-byte segments"
        )


def read_wal_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise SourceUnavailable(f"cannot read WAL file {path}: {exc.strerror}") from None


def push_file(
    archive: WalArchive, path: str, *, expected_system_identifier: str | None = None
) -> bool:
    """Archive one file PostgreSQL hands to archive_command. True when stored now, False
    when an identical copy was archived already."""
    name = check_name(os.path.basename(path))
    data = read_wal_file(path)
    if SEGMENT.match(name) or PARTIAL.match(name):
        header = read_segment_header(name, data)
        check_cluster(archive, name, header, expected_system_identifier)
    return archive.push(name, data)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fetch_to(archive: WalArchive, name: str, dest_path: str) -> bool:
    """Write an archived file to dest_path (temp file + fsync + rename, so a reader never
    sees part of it). False, writing nothing, when it is not archived."""
    data = archive.fetch(check_name(name))
    if data is None:
        return False
    folder = os.path.dirname(os.path.abspath(dest_path))
    tmp = os.path.join(folder, f".{os.path.basename(dest_path)}.medvault-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest_path)
        _fsync_dir(folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise RestoreTargetError(f"cannot write {dest_path}: {exc.strerror}") from None
    return True


# -- asynchronous push ---------------------------------------------------------------------


@dataclass
class Spool:
    """Markers of files pushed ahead of PostgreSQL asking: <spool>/<name> holds the identity
    (inode, size, mtime) of the file that was pushed, the source and the repository. Never
    WAL bytes. A call for a marked name whose file still has that identity is acknowledged
    at once and its marker removed; anything else is pushed again (identical: a no-op)."""

    path: str
    source: str
    repository: str

    @staticmethod
    def default_path(wal_path: str) -> str:
        """Next to the segments, in pg_wal: always writable by the archiver, never copied by a
        base backup (pg_basebackup and the backup API leave pg_wal's contents out)."""
        return os.path.join(os.path.dirname(os.path.abspath(wal_path)), SPOOL_DIR_NAME)

    def identity(self, wal_path: str) -> dict[str, Any]:
        st = os.stat(wal_path)
        return {
            "inode": st.st_ino,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "source": self.source,
            "repository": self.repository,
        }

    def acknowledge(self, name: str, wal_path: str) -> bool:
        marker = os.path.join(self.path, name)
        try:
            with open(marker, encoding="utf-8") as handle:
                recorded = json.load(handle)
            matches = recorded == self.identity(wal_path)
        except (OSError, ValueError):
            return False
        with contextlib.suppress(OSError):
            os.unlink(marker)
        return bool(matches)

    def record(self, name: str, identity: dict[str, Any]) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        marker = os.path.join(self.path, name)
        tmp = f"{marker}.tmp-{os.urandom(4).hex()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(identity, handle)
        os.replace(tmp, marker)

    def markers(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.path) if is_archivable(n))
        except FileNotFoundError:
            return []

    def prune(self, wal_dir: str) -> None:
        """Drop markers whose file PostgreSQL has since removed or recycled, and leftovers."""
        for entry in os.listdir(self.path) if os.path.isdir(self.path) else ():
            if not is_archivable(entry) or not os.path.exists(os.path.join(wal_dir, entry)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.path, entry))


@dataclass
class BatchResult:
    pushed: list[str] = field(default_factory=list)  # stored now or identical already
    spooled: list[str] = field(default_factory=list)
    failed: dict[str, MedvaultError] = field(default_factory=dict)


def ready_files(wal_dir: str) -> list[str]:
    """Names PostgreSQL has marked ready to archive, history files first (as it does)."""
    try:
        entries = os.listdir(os.path.join(wal_dir, "archive_status"))
    except FileNotFoundError:
        return []
    names = [e.removesuffix(".ready") for e in entries if e.endswith(".ready")]
    return sorted((n for n in names if is_archivable(n)), key=lambda n: (not HISTORY.match(n), n))


def push_ready(
    archive: WalArchive,
    wal_path: str,
    spool: Spool,
    *,
    batch: int = ASYNC_BATCH,
    workers: int = ASYNC_WORKERS,
    warn: Callable[[str], None] | None = None,
) -> BatchResult:
    """Push wal_path and up to batch-1 other ready files in parallel; mark the others in the
    spool once each is durable. Raises when wal_path itself could not be pushed."""
    from concurrent.futures import ThreadPoolExecutor

    wal_dir = os.path.dirname(os.path.abspath(wal_path))
    name = check_name(os.path.basename(wal_path))
    others = [n for n in ready_files(wal_dir) if n != name][: max(0, batch - 1)]
    spool.prune(wal_dir)
    result = BatchResult()

    def push_one(file_name: str) -> None:
        path = os.path.join(wal_dir, file_name)
        if file_name == name:
            push_file(archive, path)
            return
        identity = spool.identity(path)  # before reading: what was pushed is this file
        push_file(archive, path)
        faults.point("wal.spool.before-marker")
        spool.record(file_name, identity)
        faults.point("wal.spool.after-marker")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {n: pool.submit(push_one, n) for n in [name, *others]}
    for file_name, future in futures.items():
        exc = future.exception()
        if exc is None:
            (result.pushed if file_name == name else result.spooled).append(file_name)
        elif isinstance(exc, FileNotFoundError) and file_name != name:
            continue  # archived and removed meanwhile
        elif isinstance(exc, MedvaultError):
            result.failed[file_name] = exc
        elif isinstance(exc, OSError):
            result.failed[file_name] = SourceUnavailable(f"spool {spool.path}: {exc}")
        else:
            raise exc
    if name in result.failed:
        raise result.failed[name]
    for file_name, error in result.failed.items():
        if warn is not None:
            warn(f"medvault: warning: {file_name} not pushed ahead: {error}")
    return result


# -- status ----------------------------------------------------------------------------------


@dataclass
class TimelineSummary:
    timeline: int
    first: str | None
    last: str | None
    count: int
    missing: list[str]
    history: bool
    partial: list[str]
    backup_labels: int


def summarize(archive: WalArchive, segment_size: int) -> list[TimelineSummary]:
    """Per timeline: first, last and count of segments, and the gaps between them."""
    names = archive.names()
    timelines = sorted({segment_timeline(n) for n in names})
    summaries = []
    for tli in timelines:
        mine = [n for n in names if segment_timeline(n) == tli]
        segnos = sorted(segment_number(n, segment_size) for n in mine if SEGMENT.match(n))
        present = set(segnos)
        missing = (
            [
                _name_of(tli, s, segment_size)
                for s in range(segnos[0], segnos[-1] + 1)
                if s not in present
            ]
            if segnos
            else []
        )
        has_history = history_name(tli) in mine
        if tli > 1 and segnos and not has_history:
            missing.insert(0, history_name(tli))
        summaries.append(
            TimelineSummary(
                timeline=tli,
                first=_name_of(tli, segnos[0], segment_size) if segnos else None,
                last=_name_of(tli, segnos[-1], segment_size) if segnos else None,
                count=len(segnos),
                missing=missing,
                history=has_history,
                partial=[n for n in mine if PARTIAL.match(n)],
                backup_labels=sum(1 for n in mine if BACKUP_LABEL.match(n)),
            )
        )
    return summaries


ARCHIVER_COLUMNS = (
    "archived_count",
    "last_archived_wal",
    "last_archived_time",
    "failed_count",
    "last_failed_wal",
    "last_failed_time",
)


def archiver_stats(dsn: str) -> dict[str, Any]:
    """pg_stat_archiver, plus whether the archiver is failing now (its last attempt failed)."""
    from medvault.sources.postgres.server import connect

    with connect(dsn) as conn:
        row = conn.execute(f"SELECT {', '.join(ARCHIVER_COLUMNS)} FROM pg_stat_archiver").fetchone()
        mode = conn.execute("SELECT current_setting('archive_mode')").fetchone()
    assert row is not None and mode is not None
    stats = dict(zip(ARCHIVER_COLUMNS, row, strict=True))
    failed, archived = stats["last_failed_time"], stats["last_archived_time"]
    stats["archive_mode"] = mode[0]
    stats["failing"] = failed is not None and (archived is None or failed > archived)
    return stats


def ready_count(pgdata: str | None) -> int | None:
    """The archiver's backlog when the data directory is on this host and readable."""
    if not pgdata:
        return None
    try:
        entries = os.listdir(os.path.join(pgdata, "pg_wal", "archive_status"))
    except OSError:
        return None
    return sum(1 for e in entries if e.endswith(".ready"))


# -- retention -------------------------------------------------------------------------------


@dataclass
class WalPruneResult:
    deleted: int = 0
    freed_bytes: int = 0
    kept_locked: int = 0
    notes: list[str] = field(default_factory=list)


def prune_wal(
    repo: Repository,
    windows: dict[str, dt.timedelta],
    *,
    young: dt.timedelta,
    dry_run: bool = False,
) -> WalPruneResult:
    """Remove archived WAL segments no retained physical backup and no PITR window needs.

    Per source: a segment goes only when it ends before the start of the oldest retained
    physical backup of that source (recovery replays from a backup's start onward, on
    whatever timeline), and it was archived longer ago than the source's `pitr_window` (and
    the safety margin `young`, which protects the WAL of a backup still running). History
    files, backup labels and the cluster record are kept: they are small, and recovery
    reads them. With no physical backup retained nothing is removed: a first backup may be
    on its way."""
    from medvault.errors import ObjectLocked, ObjectNotFound
    from medvault.repository.wal import WalArchive, archived_sources

    result = WalPruneResult()
    now = time.time()
    physical = [s for s in repo.list_snapshots() if s.kind == "postgres.physical"]
    sources = archived_sources(repo)
    for source in sources:
        own = [s for s in physical if s.source == source and s.facts.get("start_lsn")]
        if not own:
            result.notes.append(f"{source}: no physical backup retained; its WAL is kept")
            continue
        cutoff = min(parse_lsn(str(s.facts["start_lsn"])) for s in own)
        size = int(own[0].facts.get("wal_segment_size") or 16 * 1024 * 1024)
        keep_newer = now - max(windows.get(source, dt.timedelta(0)), young).total_seconds()
        archive = WalArchive(repo, source)
        for obj in archive.files():
            name = obj.name
            if not (SEGMENT.match(name) or PARTIAL.match(name)):
                continue
            if obj.archived_at is None or obj.archived_at > keep_newer:
                continue
            if segment_start_lsn(name[:24], size) + size > cutoff:
                continue
            if dry_run:
                result.deleted += 1
                result.freed_bytes += obj.size
                continue
            try:
                archive.delete(name)
            except ObjectNotFound:
                continue
            except ObjectLocked:
                result.kept_locked += 1
                continue
            result.deleted += 1
            result.freed_bytes += obj.size
    return result
