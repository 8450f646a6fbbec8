"""Opening a catalog by URL, keeping run records in it, and the queries behind `runs` and
`stats`.

A catalog brings itself to the newest schema when opened (Alembic, migrations/ in this
package); one written by a newer medvault is refused with one line rather than misread. Run
records come and go as plain dicts with RunRecord's fields (this layer sits below the service
layer and does not know its classes): times as ISO 8601 strings, lists as lists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from sqlalchemy import (
    Engine,
    Row,
    Select,
    and_,
    create_engine,
    delete,
    event,
    inspect,
    select,
    text,
    union_all,
)
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from medvault.catalog.models import Base, ChainHead, RunRow
from medvault.errors import CatalogUnavailable, UnsupportedFormat, first_line

# The newest revision in migrations/versions/: a catalog already there is opened without
# loading Alembic at all (it costs more to import than the rest of a `runs`).
HEAD = "0001"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Held while a PostgreSQL catalog is migrated, so that hosts opening it at once take turns.
_MIGRATION_LOCK = 0x6D6564766C7401  # "medvlt\x01"
# Statuses that `runs --failed` shows: every run that did not end "ok".
NOT_OK = ("failed", "incomplete", "refused")
_BATCH = 2000

RUNS = Base.metadata.tables[RunRow.__tablename__]
HEADS = Base.metadata.tables[ChainHead.__tablename__]
COLUMNS = tuple(c.name for c in RUNS.columns)


class OperationTotals(NamedTuple):
    """One source and operation over a period. p95 is the nearest-rank percentile: the
    duration at rank ceil(0.95 n) of n, in ascending order; the mean and p95 are of all its
    runs, whatever their status."""

    source: str | None
    operation: str
    runs: int
    succeeded: int
    mean_duration_s: float
    p95_duration_s: float
    bytes_read: int
    bytes_stored: int
    bytes_restored: int


class _Group:
    __slots__ = ("durations", "ok", "read", "restored", "stored")

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.ok = self.read = self.stored = self.restored = 0


def nearest_rank(values: list[float], share: float) -> float:
    """The nearest-rank percentile: the ceil(share * n)-th smallest of n values."""
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)), 1) - 1]


class BackupTimes(NamedTuple):
    started: dt.datetime  # UTC, naive
    ended: dt.datetime


class Catalog:
    """An open catalog. Use as a context manager, or close() it."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url  # for messages: the password hidden

    @classmethod
    def open(cls, url: str) -> Catalog:
        """Open (and create or migrate) the catalog at an SQLAlchemy URL."""
        try:
            engine = _engine(url)
        except ArgumentError as exc:
            raise CatalogUnavailable(f"[catalog] url {url!r} is unusable: {exc}") from None
        catalog = cls(engine, engine.url.render_as_string(hide_password=True))
        try:
            with catalog._errors("opened"):
                _upgrade(engine, catalog.url)
        except BaseException:
            engine.dispose()
            raise
        return catalog

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise CatalogUnavailable(
                f"the catalog at {self.url} could not be {doing}: {first_line(cause)}"
            ) from None

    # -- writing ---------------------------------------------------------------------------

    def add(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Keep run records; one already kept (by run_id) is left as it is, so the same
        record may arrive from an observer and from the audit chain."""
        rows = [row_of(record) for record in records]
        with self._errors("written"), self.engine.begin() as conn:
            for start in range(0, len(rows), _BATCH):
                conn.execute(
                    _insert_ignoring_duplicates(conn.dialect.name), rows[start : start + _BATCH]
                )

    def clear(self) -> None:
        """Forget every run and chain head (a rebuild starts here)."""
        with self._errors("cleared"), self.engine.begin() as conn:
            conn.execute(delete(RUNS))
            conn.execute(delete(HEADS))

    def heads(self, repository_id: str) -> dict[str, tuple[int, str]]:
        """chain -> (seq, mac) of the last audit record read from each chain."""
        query = select(HEADS.c.chain, HEADS.c.seq, HEADS.c.mac).where(
            HEADS.c.repository_id == repository_id
        )
        with self._errors("read"), self.engine.connect() as conn:
            return {chain: (seq, mac) for chain, seq, mac in conn.execute(query)}

    def set_head(self, repository_id: str, chain: str, seq: int, mac: str) -> None:
        key = and_(HEADS.c.repository_id == repository_id, HEADS.c.chain == chain)
        with self._errors("written"), self.engine.begin() as conn:
            conn.execute(delete(HEADS).where(key))
            conn.execute(
                HEADS.insert().values(repository_id=repository_id, chain=chain, seq=seq, mac=mac)
            )

    # -- reading ---------------------------------------------------------------------------

    def runs(
        self,
        *,
        source: str | None = None,
        operation: str | None = None,
        failed: bool = False,
        since: dt.datetime | None = None,
        limit: int | None = 50,
    ) -> list[dict[str, Any]]:
        """Run records, newest first."""

        def newest(*statuses: str) -> Select[Any]:
            query = select(RUNS)
            if source is not None:
                query = query.where(RUNS.c.source == source)
            if operation is not None:
                query = query.where(RUNS.c.operation == operation)
            if statuses:
                query = query.where(RUNS.c.status.in_(statuses))
            if since is not None:
                query = query.where(RUNS.c.started >= naive_utc(since))
            return query.order_by(RUNS.c.started.desc(), RUNS.c.run_id.desc()).limit(limit)

        if failed:
            # The newest of each status apart, then merged: each walks its own index range
            # backwards and stops at `limit`, however rare or common failures are (one query
            # with IN sorted every failure first).
            parts = union_all(*(newest(status).subquery().select() for status in NOT_OK))
            merged = parts.subquery()
            query = (
                select(merged)
                .order_by(merged.c.started.desc(), merged.c.run_id.desc())
                .limit(limit)
            )
        else:
            query = newest()
        with self._errors("read"), self.engine.connect() as conn:
            return [record_of(row) for row in conn.execute(query)]

    def operation_totals(self, since: dt.datetime, until: dt.datetime) -> list[OperationTotals]:
        """Runs started in [since, until), per source and operation. The columns come from
        one range of the index on `started`, which holds them all (no row of the table is
        read), and are summed here: SQLite grouped them through another index and read every
        row of the table, ten times slower than this."""
        query = select(
            RUNS.c.source,
            RUNS.c.operation,
            RUNS.c.status,
            RUNS.c.duration_s,
            RUNS.c.bytes_read,
            RUNS.c.bytes_stored,
            RUNS.c.bytes_restored,
        ).where(RUNS.c.started >= naive_utc(since), RUNS.c.started < naive_utc(until))
        groups: dict[tuple[str | None, str], _Group] = {}
        with self._errors("read"), self.engine.connect() as conn:
            for source, operation, status, duration, read, stored, restored in conn.execute(query):
                group = groups.get((source, operation))
                if group is None:
                    group = groups[(source, operation)] = _Group()
                group.durations.append(duration)
                group.ok += status == "ok"
                group.read += read
                group.stored += stored
                group.restored += restored
        return [
            OperationTotals(
                source,
                operation,
                len(g.durations),
                g.ok,
                math.fsum(g.durations) / len(g.durations),
                nearest_rank(g.durations, 0.95),
                g.read,
                g.stored,
                g.restored,
            )
            for (source, operation), g in sorted(
                groups.items(), key=lambda item: (item[0][0] is None, item[0][0] or "", item[0][1])
            )
        ]

    def successful_backups(
        self, source: str, since: dt.datetime, until: dt.datetime
    ) -> list[BackupTimes]:
        """Backups of a source that ended ok, started in [since, until), oldest first."""
        query = (
            select(RUNS.c.started, RUNS.c.ended)
            .where(
                RUNS.c.source == source,
                RUNS.c.operation == "backup",
                RUNS.c.started >= naive_utc(since),
                RUNS.c.started < naive_utc(until),
                RUNS.c.status == "ok",
            )
            .order_by(RUNS.c.started)
        )
        with self._errors("read"), self.engine.connect() as conn:
            return [BackupTimes(started, ended) for started, ended in conn.execute(query)]

    def drill_details(
        self, source: str | None, since: dt.datetime, until: dt.datetime
    ) -> list[dict[str, Any]]:
        """The details of a source's drills started in [since, until)."""
        query = select(RUNS.c.details).where(
            RUNS.c.source == source if source is not None else RUNS.c.source.is_(None),
            RUNS.c.operation == "drill",
            RUNS.c.started >= naive_utc(since),
            RUNS.c.started < naive_utc(until),
        )
        with self._errors("read"), self.engine.connect() as conn:
            return [dict(details or {}) for (details,) in conn.execute(query)]

    def revision(self) -> str | None:
        with self._errors("read"), self.engine.connect() as conn:
            return _revision(conn)


# -- rows and records ----------------------------------------------------------------------


def naive_utc(moment: dt.datetime) -> dt.datetime:
    """A time as the catalog stores it: UTC without a zone (a naive one is taken as UTC)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def _iso(moment: dt.datetime) -> str:
    return moment.replace(tzinfo=dt.UTC).isoformat(timespec="milliseconds")


def row_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A run record's columns. Keys the catalog has no column for (a newer record's) are
    left out; optional ones missing (an older record's) are None."""
    row = {name: record.get(name) for name in COLUMNS}
    row["started"] = naive_utc(dt.datetime.fromisoformat(record["started"]))
    row["ended"] = naive_utc(dt.datetime.fromisoformat(record["ended"]))
    row["snapshots"] = list(record.get("snapshots") or ())
    row["compliance_flags"] = list(record.get("compliance_flags") or ())
    row["details"] = dict(record.get("details") or {})
    return row


def record_of(row: Row[Any]) -> dict[str, Any]:
    """A row as a run record's fields (RunRecord(**record_of(row)) in the service layer)."""
    record = dict(row._mapping)
    record["started"] = _iso(record["started"])
    record["ended"] = _iso(record["ended"])
    record["snapshots"] = tuple(record["snapshots"] or ())
    record["compliance_flags"] = tuple(record["compliance_flags"] or ())
    record["details"] = dict(record["details"] or {})
    return record


def _insert_ignoring_duplicates(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(RUNS).on_conflict_do_nothing(index_elements=["run_id"])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(RUNS).on_conflict_do_nothing(index_elements=["run_id"])
    raise CatalogUnavailable(f"the catalog supports SQLite and PostgreSQL, not {dialect}")


# -- opening and migrating -----------------------------------------------------------------


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Writers from several processes (a backup and a wal-push failing at once) wait
        # for each other rather than fail at once.
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Readers (`runs`) do not block writers (an observer) and the reverse.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _revision(conn: Any) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return str(found) if found is not None else None


def _upgrade(engine: Engine, url: str) -> None:
    """Bring the catalog to HEAD; refuse one whose revision this medvault does not know."""
    with engine.connect() as conn:
        current = _revision(conn)
    if current == HEAD:
        return
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if current is not None and current not in known_revisions(ScriptDirectory.from_config(config)):
        raise UnsupportedFormat(
            f"the catalog at {url} is at revision {current}, newer than this medvault knows "
            f"(up to {HEAD}): upgrade medvault, or set [catalog] url to another catalog"
        )
    with engine.begin() as conn:
        # One migration at a time, whoever else opens the catalog now: the second finds
        # the schema made when it gets the lock.
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def known_revisions(script: Any) -> Sequence[str]:
    return [rev.revision for rev in script.walk_revisions()]
