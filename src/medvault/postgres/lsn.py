"""LSNs and the WAL file names they map to: reading and printing positions, the segment that
holds a position, a segment's number and first position, the timeline in a name, and which
names are WAL files at all. Pure arithmetic on text and integers: `wal-push` uses it per
segment.
"""

from __future__ import annotations

import re

from medvault.errors import UsageError

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
# \Z, not $: a name that ends in a newline is no WAL file name.
SEGMENT = re.compile(r"^[0-9A-F]{24}\Z")
PARTIAL = re.compile(r"^[0-9A-F]{24}\.partial\Z")
BACKUP_LABEL = re.compile(r"^[0-9A-F]{24}\.[0-9A-F]{8}\.backup\Z")
HISTORY = re.compile(r"^[0-9A-F]{8}\.history\Z")
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
MAX_TIMELINE = 0xFFFFFFFF


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> an integer position."""
    # A pattern, not int(..., 16) alone: that also takes "-1", "+1" and "1_0".
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"{text!r} is not an LSN (expected the form 16/B374D848)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def is_lsn(text: str) -> bool:
    """Whether `text` is an LSN exactly as written (no surrounding blanks)."""
    return _LSN.fullmatch(text) is not None


def format_lsn(lsn: int) -> str:
    """An integer position as PostgreSQL prints it (pg_lsn's output)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _per_xlogid(segment_size: int) -> int:
    if segment_size <= 0 or segment_size & (segment_size - 1) or segment_size > 1 << 30:
        raise UsageError(f"{segment_size} is not a WAL segment size (a power of 2, <= 1 GiB)")
    return 0x100000000 // segment_size


def numbered_segment_name(timeline: int, segno: int, segment_size: int) -> str:
    """The name of segment number `segno` on `timeline` (XLogFileName)."""
    per = _per_xlogid(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def segment_name(timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The segment holding `lsn` (XLByteToSeg), as PostgreSQL names it."""
    return numbered_segment_name(timeline, lsn // segment_size, segment_size)


def segment_number(name: str, segment_size: int) -> int:
    if not SEGMENT.match(name[:24]):
        raise UsageError(f"{name!r} is not a WAL segment name")
    return int(name[8:16], 16) * _per_xlogid(segment_size) + int(name[16:24], 16)


def segment_start_lsn(name: str, segment_size: int) -> int:
    return segment_number(name, segment_size) * segment_size


def segment_timeline(name: str) -> int:
    """The timeline a WAL file name carries in its first 8 hex digits."""
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
    return [numbered_segment_name(timeline, n, segment_size) for n in range(first, last + 1)]
