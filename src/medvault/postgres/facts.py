"""The facts a PostgreSQL snapshot records for its recovery and as proof (docs/format.md §17),
as typed records, and the one conversion each way between a record and the map a snapshot
stores.

A snapshot keeps its facts as the stored map: the repository stores and copies any kind's
facts without knowing them (a copy keeps keys a newer medvault may add). Readers take them
through `PhysicalFacts.of` and `LogicalFacts.of`, which check every field, since a snapshot
is stored input that anyone holding the key can seal; writers build a record and store its
`to_map()`, whose keys, and their order, are those medvault has always written, so the
stored bytes do not change.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from medvault.errors import IntegrityError, UsageError
from medvault.postgres.lsn import MAX_TIMELINE, SEGMENT, format_lsn, parse_lsn

KIND_PHYSICAL = "postgres.physical"
KIND_LOGICAL = "postgres.logical"
KIND_CSV = "postgres.csv"
# The session settings a CSV export writes its values under, and a restore reads them
# under: dates, times in UTC, floats exact, bytea as hex, UTF-8.
CSV_SESSION_SETTINGS = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
}
METHODS = ("local", "stream")
_DECIMAL = re.compile(r"[0-9]{1,20}\Z")


class Snapshot(Protocol):
    """What these records need of a snapshot (the repository's Snapshot)."""

    @property
    def kind(self) -> str: ...

    @property
    def short_id(self) -> str: ...

    @property
    def facts(self) -> Mapping[str, Any]: ...


def iso_utc(moment: datetime) -> str:
    """A server's timestamp as the facts record it: ISO 8601 in UTC, microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ChecksumFailure:
    """A relation file with pages that failed their checksum while it was backed up."""

    file: str  # relative to the data directory, e.g. base/5/16384
    relation: str  # schema.table in database, or what could be told of it
    blocks: tuple[int, ...]


@dataclass(frozen=True)
class PhysicalFacts:
    """A physical backup: where its WAL starts and ends, the texts the restore writes, and
    what the cluster was."""

    pg_version_num: int
    pg_version: str
    system_identifier: str
    timeline: int
    start_lsn: int
    start_wal: str
    start_time: str  # the server's own words (ISO from the backup API, backup_label's text)
    data_checksums: bool
    wal_segment_size: int
    method: str  # local or stream
    pgdata: str
    tablespaces: Mapping[str, str]  # oid -> location
    stop_lsn: int
    stop_wal: str
    stop_time: str  # ISO, UTC: when the backup became restorable
    backup_label: str
    tablespace_map: str
    # None: not recorded (a local backup of a cluster without data checksums)
    checksum_failures: tuple[ChecksumFailure, ...] | None = None

    @property
    def major(self) -> int | None:
        return self.pg_version_num // 10000 or None

    @property
    def consistent_at(self) -> datetime:
        """When the backup became restorable (stop_time), aware, in UTC."""
        return datetime.fromisoformat(self.stop_time).astimezone(UTC)

    @classmethod
    def of(cls, snapshot: Snapshot) -> PhysicalFacts:
        return cls.from_map(_facts_of(snapshot, KIND_PHYSICAL), snapshot.short_id)

    @classmethod
    def from_map(cls, stored: Mapping[str, Any], snapshot: str = "") -> PhysicalFacts:
        read = _Reader(stored, snapshot)
        failures = None
        if "checksum_failures" in stored:
            failures = tuple(
                _checksum_failure(item, read)
                for item in read.value("checksum_failures", list, lambda v: True)
            )
        size = read.value("wal_segment_size", int, _segment_size)
        return cls(
            pg_version_num=read.value("pg_version_num", int, lambda v: v >= 0),
            pg_version=read.text("pg_version"),
            system_identifier=read.text("system_identifier", _DECIMAL.match),
            timeline=read.value("timeline", int, lambda v: 1 <= v <= MAX_TIMELINE),
            start_lsn=read.lsn("start_lsn"),
            start_wal=read.text("start_wal", SEGMENT.match),
            start_time=read.text("start_time"),
            data_checksums=read.value("data_checksums", bool, lambda v: True),
            wal_segment_size=size,
            method=read.text("method", lambda v: v in METHODS),
            pgdata=read.text("pgdata"),
            tablespaces=read.value("tablespaces", dict, _text_map),
            stop_lsn=read.lsn("stop_lsn"),
            stop_wal=read.text("stop_wal", SEGMENT.match),
            stop_time=read.text("stop_time", _aware_time),
            backup_label=read.text("backup_label"),
            tablespace_map=read.text("tablespace_map"),
            checksum_failures=failures,
        )

    def to_map(self) -> dict[str, Any]:
        """The stored map, keys in the order each method has always written them."""
        stored: dict[str, Any] = {
            "pg_version_num": self.pg_version_num,
            "pg_version": self.pg_version,
            "system_identifier": self.system_identifier,
            "timeline": self.timeline,
            "start_lsn": format_lsn(self.start_lsn),
            "start_wal": self.start_wal,
            "start_time": self.start_time,
            "data_checksums": self.data_checksums,
            "wal_segment_size": self.wal_segment_size,
            "method": self.method,
            "pgdata": self.pgdata,
            "tablespaces": dict(self.tablespaces),
            "stop_lsn": format_lsn(self.stop_lsn),
            "stop_wal": self.stop_wal,
            "stop_time": self.stop_time,
            "backup_label": self.backup_label,
            "tablespace_map": self.tablespace_map,
        }
        if self.checksum_failures is not None:
            stored["checksum_failures"] = [
                {"file": f.file, "relation": f.relation, "blocks": list(f.blocks)}
                for f in self.checksum_failures
            ]
        if self.method == "stream":
            return {key: stored[key] for key in _STREAM_ORDER if key in stored}
        return stored


# The streamed method learns its WAL range only at the end of the stream, and always wrote
# its facts in this order.
_STREAM_ORDER = (
    "pg_version_num",
    "pg_version",
    "system_identifier",
    "data_checksums",
    "wal_segment_size",
    "method",
    "pgdata",
    "tablespaces",
    "checksum_failures",
    "timeline",
    "start_lsn",
    "stop_lsn",
    "start_wal",
    "stop_wal",
    "start_time",
    "stop_time",
    "backup_label",
    "tablespace_map",
)


@dataclass(frozen=True)
class LogicalFacts:
    """A logical dump: the database it is of, the programs that wrote it, and the row count
    of every table, counted in the dump's own snapshot."""

    database: str
    server_version: str
    server_version_num: int
    snapshot_time: str
    # None where the server had no value to give (its catalog's column was null)
    encoding: str | None
    lc_collate: str | None
    lc_ctype: str | None
    system_identifier: str | None  # None: the role may not read pg_control_system()
    dump_format: str
    dump_compression: str
    pg_dump_version: str
    row_counts: Mapping[str, int]  # "schema.table" -> rows
    # A dump of named tables only: pg_dump's -t and -T patterns (stored only when given).
    table_patterns: tuple[str, ...] = ()
    exclude_table_patterns: tuple[str, ...] = ()

    @property
    def selective(self) -> bool:
        """Named tables only: no CREATE SCHEMA in the dump for the schemas they live in."""
        return bool(self.table_patterns)

    @classmethod
    def of(cls, snapshot: Snapshot) -> LogicalFacts:
        return cls.from_map(_facts_of(snapshot, KIND_LOGICAL), snapshot.short_id)

    @classmethod
    def from_map(cls, stored: Mapping[str, Any], snapshot: str = "") -> LogicalFacts:
        read = _Reader(stored, snapshot)
        return cls(
            database=read.text("database"),
            server_version=read.text("server_version"),
            server_version_num=read.value("server_version_num", int, lambda v: v >= 0),
            snapshot_time=read.text("snapshot_time"),
            encoding=read.optional_text("encoding"),
            lc_collate=read.optional_text("lc_collate"),
            lc_ctype=read.optional_text("lc_ctype"),
            system_identifier=read.optional_text("system_identifier", _DECIMAL.match),
            dump_format=read.text("dump_format"),
            dump_compression=read.text("dump_compression"),
            pg_dump_version=read.text("pg_dump_version"),
            row_counts=read.value("row_counts", dict, _row_counts),
            table_patterns=read.optional_texts("tables"),
            exclude_table_patterns=read.optional_texts("exclude_tables"),
        )

    def to_map(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "database": self.database,
            "server_version": self.server_version,
            "server_version_num": self.server_version_num,
            "snapshot_time": self.snapshot_time,
            "encoding": self.encoding,
            "lc_collate": self.lc_collate,
            "lc_ctype": self.lc_ctype,
            "system_identifier": self.system_identifier,
            "dump_format": self.dump_format,
            "dump_compression": self.dump_compression,
            "pg_dump_version": self.pg_dump_version,
            "row_counts": dict(self.row_counts),
        }
        if self.table_patterns:
            stored["tables"] = list(self.table_patterns)
        if self.exclude_table_patterns:
            stored["exclude_tables"] = list(self.exclude_table_patterns)
        return stored


@dataclass(frozen=True)
class CsvColumn:
    name: str
    type: str  # format_type(): e.g. "numeric(8,2)", "timestamp with time zone"


@dataclass(frozen=True)
class CsvTable:
    """One table's export: a file of the snapshot holding `COPY ... (FORMAT csv, HEADER)`."""

    schema: str
    table: str
    file: str  # the snapshot's file holding it
    rows: int
    columns: tuple[CsvColumn, ...]

    @property
    def key(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class CsvFacts:
    """A CSV export of named tables, all read in one transaction's snapshot: the database,
    the session settings the values were written under, and each table's file, columns with
    their types, and exact row count (COPY's own)."""

    database: str
    server_version: str
    server_version_num: int
    snapshot_time: str
    system_identifier: str | None
    settings: Mapping[str, str]  # DateStyle, TimeZone, ... the CSV text was written under
    table_patterns: tuple[str, ...]
    exclude_table_patterns: tuple[str, ...]
    exports: tuple[CsvTable, ...]

    @property
    def row_counts(self) -> dict[str, int]:
        return {t.key: t.rows for t in self.exports}

    @classmethod
    def of(cls, snapshot: Snapshot) -> CsvFacts:
        return cls.from_map(_facts_of(snapshot, KIND_CSV), snapshot.short_id)

    @classmethod
    def from_map(cls, stored: Mapping[str, Any], snapshot: str = "") -> CsvFacts:
        read = _Reader(stored, snapshot)
        exports = read.value("exports", list, lambda v: True)
        return cls(
            database=read.text("database"),
            server_version=read.text("server_version"),
            server_version_num=read.value("server_version_num", int, lambda v: v >= 0),
            snapshot_time=read.text("snapshot_time"),
            system_identifier=read.optional_text("system_identifier", _DECIMAL.match),
            settings=read.value("settings", dict, _text_map),
            table_patterns=read.optional_texts("tables"),
            exclude_table_patterns=read.optional_texts("exclude_tables"),
            exports=tuple(_csv_table(item, read) for item in exports),
        )

    def to_map(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "server_version": self.server_version,
            "server_version_num": self.server_version_num,
            "snapshot_time": self.snapshot_time,
            "system_identifier": self.system_identifier,
            "settings": dict(self.settings),
            "tables": list(self.table_patterns),
            "exclude_tables": list(self.exclude_table_patterns),
            "exports": [
                {
                    "schema": t.schema,
                    "table": t.table,
                    "file": t.file,
                    "rows": t.rows,
                    "columns": [{"name": c.name, "type": c.type} for c in t.columns],
                }
                for t in self.exports
            ],
            "row_counts": self.row_counts,
        }


# -- reading a stored map --------------------------------------------------------------------

Value = TypeVar("Value")


def _facts_of(snapshot: Snapshot, kind: str) -> Mapping[str, Any]:
    if snapshot.kind != kind:
        raise IntegrityError(
            f"snapshot {snapshot.short_id} is a {snapshot.kind} snapshot, not {kind}"
        )
    return snapshot.facts


class _Reader:
    """Fields of a stored facts map, each checked; IntegrityError names the first bad one."""

    def __init__(self, stored: Mapping[str, Any], snapshot: str) -> None:
        self.stored = stored
        self.snapshot = snapshot

    def bad(self, key: str) -> IntegrityError:
        whose = f"snapshot {self.snapshot}" if self.snapshot else "a snapshot"
        return IntegrityError(f"{whose} has a malformed fact {key!r}")

    def value(self, key: str, kind: type[Value], valid: Callable[[Any], object]) -> Value:
        found = self.stored.get(key)
        # bool is an int to Python, never to the format.
        if not isinstance(found, kind) or (kind is int and isinstance(found, bool)):
            raise self.bad(key)
        if not valid(found):
            raise self.bad(key)
        return found

    def text(self, key: str, valid: Callable[[str], object] = lambda v: True) -> str:
        return self.value(key, str, valid)

    def optional_text(
        self, key: str, valid: Callable[[str], object] = lambda v: True
    ) -> str | None:
        """Text or nil; the key itself must be there."""
        if key in self.stored and self.stored[key] is None:
            return None
        return self.text(key, valid)

    def optional_texts(self, key: str) -> tuple[str, ...]:
        """A list of text, or () when the key is absent (written only when there is one)."""
        if key not in self.stored:
            return ()
        found = self.value(key, list, lambda v: all(isinstance(t, str) for t in v))
        return tuple(found)

    def lsn(self, key: str) -> int:
        text = self.text(key)
        try:
            return parse_lsn(text)
        except UsageError:
            raise self.bad(key) from None


def _segment_size(size: int) -> bool:
    return 0 < size <= 1 << 30 and not size & (size - 1)


def _aware_time(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def _text_map(value: dict[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _row_counts(value: dict[Any, Any]) -> bool:
    return all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in value.items()
    )


def _checksum_failure(item: object, read: _Reader) -> ChecksumFailure:
    if not isinstance(item, dict):
        raise read.bad("checksum_failures")
    file, relation, blocks = item.get("file"), item.get("relation"), item.get("blocks")
    if (
        not isinstance(file, str)
        or not isinstance(relation, str)
        or not isinstance(blocks, list)
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks)
    ):
        raise read.bad("checksum_failures")
    return ChecksumFailure(file, relation, tuple(blocks))


def _csv_table(item: object, read: _Reader) -> CsvTable:
    if not isinstance(item, dict):
        raise read.bad("exports")
    schema, table, file, rows = (item.get(k) for k in ("schema", "table", "file", "rows"))
    columns = item.get("columns")
    if (
        not all(isinstance(v, str) and v for v in (schema, table, file))
        or not isinstance(rows, int)
        or isinstance(rows, bool)
        or rows < 0
        or not isinstance(columns, list)
        or not all(
            isinstance(c, dict)
            and isinstance(c.get("name"), str)
            and isinstance(c.get("type"), str)
            for c in columns
        )
    ):
        raise read.bad("exports")
    assert isinstance(schema, str) and isinstance(table, str) and isinstance(file, str)
    return CsvTable(
        schema, table, file, rows, tuple(CsvColumn(c["name"], c["type"]) for c in columns)
    )
