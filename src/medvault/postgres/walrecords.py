"""What a WAL segment holds: the long page header that opens it (whose cluster, which
segment, how large), and the records inside, read only as far as recovery to a time needs:
where each transaction commit or abort is, and when it happened.

Recovery to a time stops before the first commit or abort record stamped later than the
target; when the WAL holds none, PostgreSQL ends recovery with "recovery ended before
configured recovery target was reached". The newest such stamp in the archive is therefore the
newest moment a time target can reach, and it is knowable before anything is restored.

The layout (access/xlog_internal.h, access/xlogrecord.h; unchanged since PostgreSQL 9.5): pages
of xlp_xlog_blcksz bytes, each opening with a page header (40 bytes on a segment's first page,
24 on the others) that gives the page's own address; records 8-byte aligned, a 24-byte record
header, running across page headers and into the next segment. Byte order is the server's; the
platforms PostgreSQL and medvault run on are little-endian. Everything is checked as it is
read (page addresses, record lengths, each record's back-pointer to the one before), and
whatever does not check out ends the reading: a reader of stored bytes may learn less from
damaged WAL, never raise.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from medvault.errors import IntegrityError, UsageError
from medvault.postgres.lsn import format_lsn, segment_start_lsn

_PAGE_HEADER = struct.Struct("<HHIQI")  # magic, info, timeline, page address, remaining length
_LONG_PAGE_HEADER_LEN = 40
_SHORT_PAGE_HEADER_LEN = 24
_OFF_PAGE_SIZE = 36  # xlp_xlog_blcksz in the long header
# XLogLongPageHeaderData (access/xlog_internal.h): where the fields whose values say which
# cluster and which segment this is sit.
_OFF_INFO, _OFF_PAGEADDR, _OFF_SYSID, _OFF_SEG_SIZE = 2, 8, 24, 32
XLP_FIRST_IS_CONTRECORD = 0x0001
XLP_LONG_HEADER = 0x0002
_RECORD_HEADER = struct.Struct("<IIQBB")  # total length, xid, previous record, info, rmgr
RECORD_HEADER_LEN = 24
RM_XLOG_ID = 0
RM_XACT_ID = 1
XLOG_SWITCH = 0x40
XLOG_XACT_OPMASK = 0x70
# Commit, abort, commit prepared, abort prepared: the records a time target stops at.
XACT_ENDS = frozenset({0x00, 0x20, 0x30, 0x40})
_BLOCK_ID_DATA_SHORT = 255
_BLOCK_ID_DATA_LONG = 254
_BLOCK_ID_ORIGIN = 253
_BLOCK_ID_TOPLEVEL_XID = 252
POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SegmentHeader:
    system_identifier: str
    segment_size: int
    page_address: int


def read_segment_header(name: str, data: bytes) -> SegmentHeader:
    """The long page header that opens every segment: whose cluster it is, and where."""
    if len(data) < _LONG_PAGE_HEADER_LEN:
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


@dataclass(frozen=True)
class TransactionEnd:
    """A commit or abort record: where it is in the WAL, and the time stamped in it."""

    lsn: int
    time: datetime


class _Stream:
    """The record bytes of consecutive segments with their page headers taken out, and the
    way back from a position in them to an LSN."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.length = 0
        self.starts: list[int] = []  # stream position where each page's records begin
        self.lsns: list[int] = []  # the LSN at that position
        self.first_skip = 0  # bytes of a record begun in an earlier segment
        self.complete = True  # every page of every segment checked out

    def add_segment(self, data: bytes, start_lsn: int) -> None:
        if not self.complete or len(data) < _LONG_PAGE_HEADER_LEN:
            self.complete = False
            return
        page_size = int.from_bytes(data[_OFF_PAGE_SIZE : _OFF_PAGE_SIZE + 4], "little")
        if page_size < 1024 or page_size & (page_size - 1) or len(data) % page_size:
            self.complete = False
            return
        magic = _PAGE_HEADER.unpack_from(data, 0)[0]
        for offset in range(0, len(data), page_size):
            page_magic, info, _, address, remaining = _PAGE_HEADER.unpack_from(data, offset)
            if page_magic != magic or address != start_lsn + offset:
                self.complete = False  # a recycled segment's stale pages, or damage
                return
            header = _LONG_PAGE_HEADER_LEN if info & XLP_LONG_HEADER else _SHORT_PAGE_HEADER_LEN
            if not self.chunks and info & XLP_FIRST_IS_CONTRECORD:
                self.first_skip = remaining
            self.starts.append(self.length)
            self.lsns.append(address + header)
            chunk = data[offset + header : offset + page_size]
            self.chunks.append(chunk)
            self.length += len(chunk)

    def joined(self) -> bytes:
        return b"".join(self.chunks)

    def lsn_at(self, position: int) -> int:
        page = bisect.bisect_right(self.starts, position) - 1
        return self.lsns[page] + position - self.starts[page]


def _align(position: int) -> int:
    return (position + 7) & ~7


def transaction_ends(
    segment: bytes, start_lsn: int, following: bytes | None = None
) -> list[TransactionEnd]:
    """Commit and abort records that begin in `segment` (which starts at `start_lsn`), in
    WAL order. `following`, the next segment, completes a record that runs into it."""
    stream = _Stream()
    stream.add_segment(segment, start_lsn)
    in_segment = stream.length
    if following is not None:
        stream.add_segment(following, start_lsn + len(segment))
    data = stream.joined()
    found: list[TransactionEnd] = []
    # A record continued from the previous segment: its remaining bytes run across pages, so
    # skip that much of the stream.
    position = _align(stream.first_skip)
    previous: int | None = None
    while position + RECORD_HEADER_LEN <= min(in_segment, len(data)):
        total, _, back, info, rmgr = _RECORD_HEADER.unpack_from(data, position)
        lsn = stream.lsn_at(position)
        if total < RECORD_HEADER_LEN or position + total > len(data):
            break  # the end of the WAL written, or a record not held here whole
        if previous is not None and back != previous:
            break
        if rmgr == RM_XACT_ID and (info & XLOG_XACT_OPMASK) in XACT_ENDS:
            stamp = _main_data_timestamp(data, position, total)
            if stamp is not None:
                found.append(TransactionEnd(lsn, stamp))
        if rmgr == RM_XLOG_ID and (info & 0xF0) == XLOG_SWITCH:
            break  # the rest of the segment is padding
        previous = lsn
        position = _align(position + total)
    return found


def _main_data_timestamp(data: bytes, position: int, total: int) -> datetime | None:
    """The first 8 bytes of a record's main data (an xl_xact_commit or xl_xact_abort opens
    with the transaction's time), when the record holds no block references."""
    end = position + total
    cursor = position + RECORD_HEADER_LEN
    while cursor < end:
        block_id = data[cursor]
        if block_id == _BLOCK_ID_DATA_SHORT and cursor + 2 <= end:
            length, cursor = data[cursor + 1], cursor + 2
            break
        if block_id == _BLOCK_ID_DATA_LONG and cursor + 5 <= end:
            length = int.from_bytes(data[cursor + 1 : cursor + 5], "little")
            cursor += 5
            break
        if block_id == _BLOCK_ID_ORIGIN:
            cursor += 3
        elif block_id == _BLOCK_ID_TOPLEVEL_XID:
            cursor += 5
        else:
            return None  # a block reference (not a plain transaction record), or cut short
    else:
        return None
    if length < 8 or cursor + 8 > end:
        return None
    micros = int.from_bytes(data[cursor : cursor + 8], "little", signed=True)
    try:
        return POSTGRES_EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return None
