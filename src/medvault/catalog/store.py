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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    inspect,
    make_url,
    select,
    text,
    union_all,
)
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from medvault.catalog.models import Base, ChainHead, RunRow
from medvault.errors import CatalogUnavailable, UnsupportedFormat, first_line

# The newest revision in migrations/versions/: a catalog already there is opened without
# loading Alembic at all (it costs more to import than the rest of a `runs`).
HEAD = "0002"
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


def nearest_rank(count: int, percent: int) -> int:
    """The nearest rank of a percentile of `count` values: ceil(percent / 100 * count),
    in integers (0.95 * 20 in floating point is not exactly 19)."""
    return max((percent * count + 99) // 100, 1)


class DrillCounts(NamedTuple):
    drills: int
    passed: int
    within_rto: int  # passed, and within the tier's RTO


class JobHistory(NamedTuple):
    """One source and operation's newest run, its newest success and the failed or
    incomplete runs since that success (all of them when it never succeeded). Times are
    aware UTC."""

    source: str | None
    operation: str
    repository: str | None  # of the newest run
    last_status: str
    last_started: dt.datetime
    last_ended: dt.datetime
    last_error: str | None
    last_duration_s: float
    last_success: dt.datetime | None  # when the newest ok run ended
    consecutive_failures: int


class DurationHistogram(NamedTuple):
    """One operation's run durations: how many took at most each bound (cumulative, the
    bounds in ascending order), how many runs in all, and their sum in seconds."""

    operation: str
    at_most: tuple[int, ...]
    runs: int
    sum_s: float


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

    def replace(
        self, records: Iterable[Mapping[str, Any]], heads: Iterable[tuple[str, str, int, str]]
    ) -> None:
        """Every run and chain head replaced by these, in one transaction: a reader sees the
        catalog before or after, never half of it. `heads`: (repository id, chain, seq, mac)."""
        rows = [row_of(record) for record in records]
        with self._errors("written"), self.engine.begin() as conn:
            conn.execute(delete(RUNS))
            conn.execute(delete(HEADS))
            insert = _insert_ignoring_duplicates(conn.dialect.name)
            for start in range(0, len(rows), _BATCH):
                conn.execute(insert, rows[start : start + _BATCH])
            for repository_id, chain, seq, mac in heads:
                conn.execute(
                    HEADS.insert().values(
                        repository_id=repository_id, chain=chain, seq=seq, mac=mac
                    )
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

    def count_runs(self) -> int:
        with self._errors("read"), self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(RUNS)).scalar_one())

    @staticmethod
    def shown_url(url: str) -> str:
        """A catalog URL as messages show it: the password hidden."""
        return make_url(url).render_as_string(hide_password=True)

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
        """Runs started in [since, until), per source and operation: counts, sums and the
        mean in one aggregate, then each group's p95 as the row at its nearest rank in
        duration order. Both read the covering index (source, operation, started, …): the
        aggregate skips from group to group within the period (SQLite: a skip-scan, see the
        planner statistics in migrations/versions/0001), each p95 sorts one group's period."""
        period = and_(RUNS.c.started >= naive_utc(since), RUNS.c.started < naive_utc(until))
        succeeded = func.sum(case((RUNS.c.status == "ok", 1), else_=0))
        columns = [
            RUNS.c.source,
            RUNS.c.operation,
            func.count(),
            succeeded,
            func.avg(RUNS.c.duration_s),
            func.sum(RUNS.c.bytes_read),
            func.sum(RUNS.c.bytes_stored),
            func.sum(RUNS.c.bytes_restored),
        ]
        found = []
        with self._errors("read"), self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # PostgreSQL's nearest rank, in the same pass (its percentile_disc takes the
                # row at ceil(0.95 n), as nearest_rank does): no round trip per group.
                p95 = func.percentile_disc(0.95).within_group(RUNS.c.duration_s)
                query = select(*columns, p95).where(period).group_by(*columns[:2])
                rows = [tuple(row) for row in conn.execute(query)]
            else:
                query = select(*columns).where(period).group_by(*columns[:2])
                rows = [
                    (*row, self._duration_at_rank(conn, row[0], row[1], row[2], period))
                    for row in conn.execute(query).all()
                ]
        for source, operation, runs, ok, mean, read, stored, restored, p95_s in rows:
            found.append(
                OperationTotals(
                    source,
                    operation,
                    runs,
                    int(ok),
                    float(mean),
                    float(p95_s),
                    int(read),
                    int(stored),
                    int(restored),
                )
            )
        found.sort(key=lambda t: (t.source is None, t.source or "", t.operation))
        return found

    @staticmethod
    def _duration_at_rank(
        conn: Connection, source: str | None, operation: str, runs: int, period: Any
    ) -> float:
        """A group's p95: its period's durations in order from the covering index, the one at
        the nearest rank (OFFSET rank - 1)."""
        of_source = RUNS.c.source.is_(None) if source is None else RUNS.c.source == source
        query = (
            select(RUNS.c.duration_s)
            .where(of_source, RUNS.c.operation == operation, period)
            .order_by(RUNS.c.duration_s)
            .limit(1)
            .offset(nearest_rank(runs, 95) - 1)
        )
        return float(conn.execute(query).scalar_one())

    def within_rpo(
        self, source: str, rpo: dt.timedelta, since: dt.datetime, until: dt.datetime
    ) -> float:
        """The share of [since, until) in which a recovery point of `source` no older than
        `rpo` existed. A successful backup is a recovery point of the moment it started,
        usable from the moment it ended: it covers [ended, started + rpo]. The query reads
        only the source's successful backups, from the covering index, as pairs of seconds
        (SQL does the arithmetic; a pair of floats costs a fraction of a pair of timestamps
        parsed by SQLAlchemy); the union of the intervals is measured here, since SQLite's
        running MAX() window costs more than the loop."""
        start, end = naive_utc(since), naive_utc(until)
        start_s, end_s = _epoch(start), _epoch(end)
        rpo_s = rpo.total_seconds()
        with self._errors("read"), self.engine.connect() as conn:
            epoch = _sql_epoch(conn.dialect.name)
            lo, hi = epoch(RUNS.c.ended), epoch(RUNS.c.started) + rpo_s
            query = (
                select(lo, hi)
                .where(
                    RUNS.c.source == source,
                    RUNS.c.operation == "backup",
                    RUNS.c.started >= start - rpo,
                    RUNS.c.started < end,
                    RUNS.c.status == "ok",
                )
                .order_by(lo)
            )
            intervals = conn.execute(query).all()
        covered = 0.0
        reach = start_s  # covered up to here
        for begins, ends in intervals:
            # An interval ending before it begins (a backup longer than the RPO) covers
            # nothing, and moves `reach` nowhere.
            ends = min(ends, end_s)
            if ends > reach and ends > begins:
                covered += ends - max(begins, reach)
                reach = ends
        return covered / (end_s - start_s)

    def drill_counts(self, since: dt.datetime, until: dt.datetime) -> dict[str | None, DrillCounts]:
        """Per source, its drills started in [since, until): run, passed, passed within the
        tier's RTO (as the drill's details say: `passed` and `within_rto` true)."""
        with self._errors("read"), self.engine.connect() as conn:
            passed = _json_true(conn.dialect.name, "passed")
            within = and_(passed, _json_true(conn.dialect.name, "within_rto"))
            query = (
                select(
                    RUNS.c.source,
                    func.count(),
                    func.sum(case((passed, 1), else_=0)),
                    func.sum(case((within, 1), else_=0)),
                )
                .where(
                    RUNS.c.operation == "drill",
                    RUNS.c.started >= naive_utc(since),
                    RUNS.c.started < naive_utc(until),
                )
                .group_by(RUNS.c.source)
            )
            return {
                source: DrillCounts(drills, int(ok), int(in_time))
                for source, drills, ok, in_time in conn.execute(query)
            }

    def job_history(
        self, *, repository: str | None = None, operation: str | None = None
    ) -> list[JobHistory]:
        """Per source and operation (of one repository's runs, or one operation's, when
        given): the newest run, the newest success and the failures since. A few indexed
        lookups per group (groups are sources times operations: tens)."""
        where = []
        if repository is not None:
            where.append(RUNS.c.repository == repository)
        if operation is not None:
            where.append(RUNS.c.operation == operation)
        groups = select(RUNS.c.source, RUNS.c.operation).where(*where).distinct()
        found = []
        with self._errors("read"), self.engine.connect() as conn:
            for source, op in conn.execute(groups).all():
                of_group = [
                    RUNS.c.source.is_(None) if source is None else RUNS.c.source == source,
                    RUNS.c.operation == op,
                    *where,
                ]
                newest = select(RUNS).where(*of_group)
                newest = newest.order_by(RUNS.c.started.desc(), RUNS.c.run_id.desc()).limit(1)
                last = conn.execute(newest).one()
                ok = conn.execute(
                    select(RUNS.c.started, RUNS.c.ended)
                    .where(*of_group, RUNS.c.status == "ok")
                    .order_by(RUNS.c.started.desc())
                    .limit(1)
                ).first()
                since_ok = [RUNS.c.started > ok.started] if ok is not None else []
                failures = conn.execute(
                    select(func.count())
                    .select_from(RUNS)
                    .where(*of_group, *since_ok, RUNS.c.status.in_(("failed", "incomplete")))
                ).scalar_one()
                found.append(
                    JobHistory(
                        source=source,
                        operation=op,
                        repository=last.repository,
                        last_status=last.status,
                        last_started=_aware(last.started),
                        last_ended=_aware(last.ended),
                        last_error=last.error,
                        last_duration_s=float(last.duration_s),
                        last_success=_aware(ok.ended) if ok is not None else None,
                        consecutive_failures=int(failures),
                    )
                )
        found.sort(key=lambda j: (j.source is None, j.source or "", j.operation))
        return found

    def run_counts(self) -> dict[tuple[str, str], int]:
        """(operation, status) -> how many runs the catalog holds."""
        query = select(RUNS.c.operation, RUNS.c.status, func.count()).group_by(
            RUNS.c.operation, RUNS.c.status
        )
        with self._errors("read"), self.engine.connect() as conn:
            return {(op, status): int(n) for op, status, n in conn.execute(query)}

    def duration_histograms(self, bounds: Sequence[float]) -> list[DurationHistogram]:
        """Per operation, every run's duration counted into `bounds` (ascending seconds), in
        one aggregate: the catalog's rows never travel."""
        at_most = [func.sum(case((RUNS.c.duration_s <= bound, 1), else_=0)) for bound in bounds]
        query = select(
            RUNS.c.operation, func.count(), func.sum(RUNS.c.duration_s), *at_most
        ).group_by(RUNS.c.operation)
        with self._errors("read"), self.engine.connect() as conn:
            return [
                DurationHistogram(
                    row[0], tuple(int(n) for n in row[3:]), int(row[1]), float(row[2])
                )
                for row in conn.execute(query)
            ]

    def revision(self) -> str | None:
        with self._errors("read"), self.engine.connect() as conn:
            return _revision(conn)


# -- rows and records ----------------------------------------------------------------------


def naive_utc(moment: dt.datetime) -> dt.datetime:
    """A time as the catalog stores it: UTC without a zone (a naive one is taken as UTC)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def _aware(moment: dt.datetime) -> dt.datetime:
    """A stored (naive UTC) time as an aware one."""
    return moment.replace(tzinfo=dt.UTC)


_EPOCH = dt.datetime(1970, 1, 1)


def _epoch(moment: dt.datetime) -> float:
    """Seconds since 1970 of a naive UTC time."""
    return (moment - _EPOCH).total_seconds()


def _sql_epoch(dialect: str) -> Any:
    """The SQL of _epoch: from Julian days in SQLite, date_part (a double) in PostgreSQL."""
    if dialect == "sqlite":
        return lambda column: (func.julianday(column) - 2440587.5) * 86400.0
    return lambda column: func.date_part("epoch", column)


def _json_true(dialect: str, key: str) -> Any:
    """`details[key]` is JSON true (not merely truthy: a 1 or "yes" is not a pass)."""
    if dialect == "sqlite":
        return func.json_type(RUNS.c.details, f"$.{key}") == "true"
    field = RUNS.c.details[key]
    return and_(func.json_typeof(field) == "boolean", field.as_string() == "true")


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


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite catalog (None: PostgreSQL, or SQLite in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


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
