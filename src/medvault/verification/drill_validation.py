"""Validating a drill's restored cluster: every table's and TOAST table's count(*) by a
sequential scan and amcheck's bt_index_check on every valid B-tree index, as one
largest-first list worked down by one connection per core, then the user's checks.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medvault.errors import RecoveryFailed, first_line
from medvault.postgres.server import server_errors
from medvault.verification.user_checks import run_user_checks

if TYPE_CHECKING:
    from medvault.recovery.postgres import ServerAccess
    from medvault.verification.drills import Check
    from medvault.verification.physical_drill import DrillOptions


# Each table with its TOAST table, where large values (scanned letters in a bytea, long notes)
# live out of line: a count of the table never reads them.
TABLES = """
SELECT format('%I.%I', n.nspname, c.relname), pg_relation_size(c.oid),
       CASE WHEN t.oid IS NOT NULL THEN format('%I.%I', tn.nspname, t.relname) END,
       pg_relation_size(t.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE c.relkind IN ('r', 'm') AND (c.relkind <> 'm' OR c.relispopulated)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""

BTREE_INDEXES = """
SELECT c.oid, format('%I.%I', n.nspname, c.relname), pg_relation_size(c.oid)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = c.relam
WHERE am.amname = 'btree' AND i.indisvalid AND i.indisready AND c.relpersistence <> 't'
"""

# count(*) must read the heap: with an all-visible table the planner prefers an index-only
# scan, which reads the visibility map and an index but not one row of the table. Parallel
# query is off: the drill's own connections already keep every core busy, and the
# workers it would start only take time from the index checks.
HEAP_ONLY = (
    "SET enable_indexonlyscan = off",
    "SET enable_indexscan = off",
    "SET enable_bitmapscan = off",
    "SET max_parallel_workers_per_gather = 0",
)

# Connections validating at once, one per core (the copy has nothing else to do), at least
# two so a large table and a large index proceed together, at most eight.
CHECKERS = max(2, min(os.cpu_count() or 2, 8))


@dataclass
class _Tally:
    """What one kind of validation found."""

    done: int = 0
    rows: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Job:
    """One table (or a table's TOAST table) to count or one index to check, with its size
    for the largest-first order."""

    size: int
    database: str
    kind: str  # "table", "toast" or "index"
    name: str
    oid: int = 0
    owner: str = ""  # a TOAST table's table

    def shown(self) -> str:
        return f"{self.name} (TOAST of {self.owner})" if self.owner else self.name


def _plan_validation(
    access: ServerAccess, port: int, databases: list[str], amcheck: bool, tallies: dict[str, _Tally]
) -> list[_Job]:
    """Every table and (with amcheck) every B-tree index, largest first: connections working
    down that list finish together, where one per kind left a core idle. A database
    that cannot even be opened (a damaged catalog) is a failure of its own; the others are
    still validated."""
    import psycopg

    jobs: list[_Job] = []
    for database in databases:
        try:
            jobs += _database_jobs(access, port, database, amcheck, tallies["index"])
        except (psycopg.Error, RecoveryFailed) as exc:
            tallies["table"].failures.append(f"{database}: cannot be read: {first_line(exc)}")
    jobs.sort(key=lambda job: (-job.size, job.database, job.name))
    return jobs


def _database_jobs(
    access: ServerAccess, port: int, database: str, amcheck: bool, indexes: _Tally
) -> list[_Job]:
    import psycopg

    jobs: list[_Job] = []
    with access.connect(port, database, timeout=10) as conn:
        for table, size, toast, toast_size in conn.execute(TABLES).fetchall():
            jobs.append(_Job(size, database, "table", table))
            if toast is not None:
                jobs.append(_Job(toast_size, database, "toast", toast, owner=table))
        if not amcheck:
            return jobs
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        except psycopg.Error as exc:
            indexes.failures.append(f"{database}: amcheck not installable: {first_line(exc)}")
            return jobs
        for oid, index, size in conn.execute(BTREE_INDEXES).fetchall():
            jobs.append(_Job(size, database, "index", index, oid))
    return jobs


def _run_checks(
    access: ServerAccess,
    port: int,
    jobs: deque[_Job],
    tallies: dict[str, _Tally],
    began: float,
    lock: threading.Lock,
) -> None:
    """Take jobs off the shared list until it is empty, one connection per database."""
    import psycopg

    connections: dict[str, Any] = {}
    try:
        while True:
            with lock:
                if not jobs:
                    return
                job = jobs.popleft()
            rows, failure = 0, None
            try:
                conn = connections.get(job.database)
                if conn is None or conn.closed:
                    conn = connections[job.database] = access.connect(port, job.database, 10)
                    for setting in HEAP_ONLY:
                        conn.execute(setting)
                if job.kind == "index":
                    conn.execute("SELECT bt_index_check(%s)", (job.oid,))
                else:
                    rows = int(conn.execute(f"SELECT count(*) FROM {job.name}").fetchone()[0])
            except (psycopg.Error, RecoveryFailed) as exc:
                failure = f"{job.database}: {job.shown()}: {first_line(exc)}"
            with lock:
                tally = tallies[job.kind]
                tally.rows += rows
                if failure is None:
                    tally.done += 1
                else:
                    tally.failures.append(failure)
                tally.seconds = time.monotonic() - began
    except BaseException:
        with lock:
            jobs.clear()  # the other connection stops too: the drill fails either way
        raise
    finally:
        for conn in connections.values():
            conn.close()


def validate(
    access: ServerAccess, port: int, options: DrillOptions, add: Callable[[Check], None]
) -> None:
    """Every table counted and every B-tree index checked, by CHECKERS connections sharing
    one largest-first list: validation is most of a drill's own time."""
    from medvault.verification.drills import Check

    began = time.monotonic()
    with access.connect(port) as conn, server_errors("the restored copy", RecoveryFailed):
        databases = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
                " ORDER BY datname"
            )
        ]
        amcheck = (
            conn.execute(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'"
            ).fetchone()[0]
            > 0
        )
    tallies = {"table": _Tally(), "toast": _Tally(), "index": _Tally()}
    jobs = deque(_plan_validation(access, port, databases, amcheck, tallies))
    lock = threading.Lock()
    with ThreadPoolExecutor(CHECKERS, "medvault-drill-check") as pool:
        workers = [
            pool.submit(_run_checks, access, port, jobs, tallies, began, lock)
            for _ in range(CHECKERS)
        ]
        for worker in workers:
            worker.result()
    tables, toast, checked = tallies["table"], tallies["toast"], tallies["index"]
    unreadable = tables.failures + toast.failures
    add(
        Check(
            "tables",
            not unreadable,
            f"{tables.done} tables in {len(databases)} database(s) read, {tables.rows} rows, "
            f"and {toast.done} TOAST tables, {toast.rows} chunks, "
            f"in {max(tables.seconds, toast.seconds):.1f} s"
            + (f"; unreadable: {'; '.join(unreadable[:5])}" if unreadable else ""),
            round(max(tables.seconds, toast.seconds), 3),
        )
    )
    if amcheck:
        add(
            Check(
                "amcheck",
                not checked.failures,
                f"{checked.done} B-tree indexes verified with bt_index_check in "
                f"{checked.seconds:.1f} s"
                + (f"; failed: {'; '.join(checked.failures[:5])}" if checked.failures else ""),
                round(checked.seconds, 3),
            )
        )
    else:
        add(Check("amcheck", True, "skipped: the amcheck extension is not installed here"))
    if options.queries:
        database = options.database or "postgres"
        try:
            conn = access.connect(port, database, timeout=10)
        except RecoveryFailed as exc:
            for query in options.queries:
                add(Check(f"check: {query}", False, f"{database}: {exc}"))
            return
        with conn:
            run_user_checks(conn, options.queries, add)
