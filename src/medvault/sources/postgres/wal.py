"""One WAL file into and out of the archive: `wal-push` (archive_command) and `wal-fetch`
(restore_command). A segment must be the segment its name says and of the archive's own
cluster; a fetched file appears whole or not at all.

Imports stay light (no repository engine, no psycopg at import time): `wal-push` runs once
per segment and must start fast.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from medvault.errors import RestoreTargetError, SourceUnavailable, WalConflict
from medvault.postgres.lsn import PARTIAL, SEGMENT, check_name
from medvault.postgres.walrecords import SegmentHeader, read_segment_header

if TYPE_CHECKING:
    from medvault.repository.wal import WalArchive


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
