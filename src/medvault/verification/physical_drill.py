"""The physical drill: restore a base backup into scratch space, replay its WAL in a throwaway
cluster, and prove the result is a working database.

Isolation. The throwaway cluster listens on no TCP address, only on a socket in a private
directory inside the scratch space, with its own pg_hba (trust, local only: nobody else can
reach the socket), archiving off, no synchronous standbys (promotion must not wait for
replicas that will never answer) and no SSL. Foreign tables are never read: they would reach
production servers.

WAL. The drill fetches the WAL itself, in order and in parallel, into a spool inside the
scratch space, a bounded number of segments ahead of replay; the server's restore_command
is a small script that waits for the next file (or fails at once for names the plan does not
hold, which is how PostgreSQL learns the archive ends). Decryption stays in this process: the
server never needs the repository's key, and no medvault process is started per segment.

Validation, in every database that accepts connections: each table's and its TOAST table's
`count(*)` by a sequential scan (the heap itself is read), amcheck's `bt_index_check` on every
valid B-tree index where the extension is available, then the user's checks from
`[source.NAME.drill]`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medvault import faults
from medvault.errors import MedvaultError, RecoveryFailed, first_line
from medvault.postgres.facts import PhysicalFacts
from medvault.recovery.postgres import write_private_file

if TYPE_CHECKING:
    from medvault.recovery.postgres import ServerAccess, WalRange
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.verification.drills import Check, DrillResult

PLAN = "plan"
COMPLETE = ".complete"
LOOKAHEAD_SEGMENTS = 16  # staged ahead of replay: 256 MiB of scratch space at 16 MiB segments
FETCH_THREADS = 4
STOP_TIMEOUT_S = 60

# restore_command: hand over a staged file; fail at once for a name the plan lacks (how
# PostgreSQL learns where the archive ends); wait for a planned one until the fetcher is done.
# Segments are moved (PostgreSQL keeps its own copy in pg_wal), history files copied (they
# are asked for more than once).
RESTORE_SCRIPT = """#!/bin/sh
spool={spool}
grep -qxF "$1" "$spool/{plan}" || exit 1
while :; do
    if [ -f "$spool/$1" ]; then
        case "$1" in
            *.history) exec cp "$spool/$1" "$2" ;;
            *) exec mv "$spool/$1" "$2" ;;
        esac
    fi
    [ -f "$spool/{complete}" ] && exit 1
    sleep 0.05
done
"""


@dataclass(frozen=True)
class DrillOptions:
    """User checks (SQL whose first value must be true, run in `database`) and the
    throwaway cluster's memory."""

    queries: tuple[str, ...] = ()
    database: str | None = None
    shared_buffers: str = "128MB"


def wal_plan(repo: Repository, snapshot: Snapshot, wal: WalRange) -> list[str]:
    """The files recovery reads, in order: the history files of the timeline chain, then
    every segment from the backup's first to `wal.last`, each from the timeline that
    supplies it."""
    from medvault.postgres.lsn import SEGMENT, segment_number
    from medvault.postgres.timelines import history_name, period_segments, timeline_periods
    from medvault.repository.wal import WalArchive

    archive = WalArchive(repo, snapshot.source)
    archive.with_secondary = True
    size = PhysicalFacts.of(snapshot).wal_segment_size
    first = segment_number(wal.first, size)
    last = segment_number(wal.last, size)
    periods, _ = timeline_periods(archive, wal.timeline)
    plan = [history_name(p.timeline) for p in periods if p.timeline > 1]
    for period in periods:
        low, high = period_segments(period, size)
        low, high = max(low, first), last if high is None else min(high, last)
        for name in archive.names(period.timeline):
            if SEGMENT.match(name) and low <= segment_number(name, size) <= high:
                plan.append(name)
    return plan


class WalFeeder:
    """Fetches the planned WAL into the spool, in order, a bounded distance ahead of the
    server consuming it. `error` holds the first failure; the spool is then marked complete
    so the server stops waiting."""

    def __init__(
        self,
        repo: Repository,
        source: str,
        spool: str,
        plan: list[str],
        owner: tuple[int, int] | None = None,
    ) -> None:
        from medvault.repository.wal import WalArchive

        self.archive = WalArchive(repo, source)
        self.spool = spool
        self.plan = plan
        self.owner = owner  # (uid, gid) the staged files get when medvault is root
        self.error: str | None = None
        self.fetched = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medvault-drill-wal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_TIMEOUT_S)

    def _fetch(self, name: str) -> None:
        """Written under a hidden name and renamed, already owned by the server's account:
        the restore script may take it the moment it appears. No fsync: a throwaway copy."""
        data = self.archive.fetch(name)
        if data is None:
            raise RecoveryFailed(f"{name} vanished from the WAL archive during the drill")
        hidden = os.path.join(self.spool, f".{name}.part")
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(hidden, os.path.join(self.spool, name))

    def _run(self) -> None:
        pending = list(self.plan)
        segments: set[str] = set()
        running: dict[Future[None], str] = {}
        try:
            with ThreadPoolExecutor(FETCH_THREADS, "medvault-drill-fetch") as pool:
                while (pending or running) and not self._stop.is_set():
                    segments = {n for n in segments if os.path.exists(f"{self.spool}/{n}")}
                    while pending and len(running) + len(segments) < LOOKAHEAD_SEGMENTS:
                        name = pending.pop(0)
                        running[pool.submit(self._fetch, name)] = name
                    done, _ = wait(list(running), timeout=0.1, return_when=FIRST_COMPLETED)
                    for future in done:
                        name = running.pop(future)
                        future.result()
                        self.fetched += 1
                        if not name.endswith(".history"):
                            segments.add(name)
        except MedvaultError as exc:
            self.error = f"WAL for the drill could not be fetched: {exc}"
        except OSError as exc:
            self.error = f"WAL for the drill could not be staged: {exc.strerror}"
        finally:
            with contextlib.suppress(OSError):
                write_private_file(os.path.join(self.spool, COMPLETE), "", 0o644)


def _server_account(pgdata: str) -> tuple[str | None, int, int]:
    """Who runs the throwaway server: nobody else when medvault is not root; as root, the
    owner the restored files carry, or `postgres` when that uid has no account here."""
    if os.geteuid() != 0:
        return None, os.getuid(), os.getgid()
    st = os.stat(os.path.join(pgdata, "PG_VERSION"))
    try:
        account = pwd.getpwuid(st.st_uid)
    except KeyError:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise RecoveryFailed(
                "PostgreSQL refuses to run as root, and the restored files' owner (uid "
                f"{st.st_uid}) has no account here, nor does a postgres user; create one"
            ) from None
    return account.pw_name, account.pw_uid, account.pw_gid


def _chown_tree(path: str, uid: int, gid: int) -> None:
    for dirpath, dirs, files in os.walk(path):
        os.chown(dirpath, uid, gid, follow_symlinks=False)
        for name in [*dirs, *files]:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _isolate(pgdata: str, scratch: str, socket_dir: str, port: int, shared_buffers: str) -> None:
    """Settings that keep the throwaway cluster to itself (appended to postgresql.auto.conf:
    later lines win over the production settings restored with the data)."""
    hba = os.path.join(scratch, "pg_hba.conf")
    ident = os.path.join(scratch, "pg_ident.conf")
    write_private_file(hba, "local all all trust\n")
    write_private_file(ident, "")
    conf = os.path.join(pgdata, "postgresql.conf")
    if not os.path.exists(conf):
        # Clusters configured from /etc (Debian's layout) keep no postgresql.conf here.
        write_private_file(conf, "")
    settings = {
        "listen_addresses": "",
        "unix_socket_directories": socket_dir,
        "unix_socket_permissions": "0700",
        "hba_file": hba,
        "ident_file": ident,
        "archive_mode": "off",
        "synchronous_standby_names": "",
        "primary_conninfo": "",
        "ssl": "off",
        "logging_collector": "off",
        "huge_pages": "try",
        "cluster_name": "medvault-drill",
        "shared_buffers": shared_buffers,
        "jit": "off",
    }
    lines = ["# medvault drill: a throwaway copy, reachable only through its private socket"]
    lines += [f"{key} = '{value}'" for key, value in settings.items()]
    lines.append(f"port = {port}")
    with open(os.path.join(pgdata, "postgresql.auto.conf"), "a") as handle:
        handle.write("\n".join(lines) + "\n")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_server(pgdata: str, pg_ctl: str | None, access: ServerAccess) -> int | None:
    """Immediate shutdown through pg_ctl (the copy is discarded), then signals to a postmaster
    still there: SIGKILL, preceded by SIGQUIT (what pg_ctl's immediate mode sends) when there
    is no pg_ctl to run. The pid of a server that survives all that, else None."""
    from medvault.verification.scratch import running_server

    if pg_ctl is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, subprocess.SubprocessError):
            access.run([pg_ctl, "-D", pgdata, "-m", "immediate", "-w", "-s", "stop"], timeout=60)
    for sent in (signal.SIGKILL,) if pg_ctl is not None else (signal.SIGQUIT, signal.SIGKILL):
        pid = running_server(pgdata)
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sent)
        deadline = time.monotonic() + 10
        while running_server(pgdata) == pid and time.monotonic() < deadline:
            time.sleep(0.05)
    return running_server(pgdata)


def stop_leftover_server(pgdata: str, pg_bin: str | None) -> str | None:
    """Stop the throwaway server a killed drill left running on pgdata, as a drill stops its
    own: pg_ctl as the account running it, then signals. None once it is gone, else why."""
    from medvault.postgres.datadir import read_major_version
    from medvault.postgres.programs import find_program
    from medvault.recovery.postgres import ServerAccess

    try:
        run_as = _server_account(pgdata)[0]
        pg_ctl: str | None = find_program("pg_ctl", pg_bin, read_major_version(pgdata))
    except (MedvaultError, OSError, ValueError):
        run_as, pg_ctl = None, None  # pg_ctl cannot be run for it: signals alone
    left = _stop_server(pgdata, pg_ctl, ServerAccess(run_as=run_as))
    if left is None:
        return None
    return (
        f"its PostgreSQL server (pid {left}) could not be stopped; stop it "
        f"(pg_ctl stop -m immediate -D {pgdata})"
    )


def run_physical_drill(
    repo: Repository,
    snapshot: Snapshot,
    scratch_parent: str | None,
    *,
    to_latest: bool,
    pg_bin: str | None,
    dsn_user: str | None,
    options: DrillOptions,
    result: DrillResult,
) -> None:
    """Restore, recover, validate, appending each check to `result`. The server is gone
    when this returns or raises, and so is the scratch space, or a failed `cleanup` check
    names what is left."""
    from medvault.postgres.programs import find_program
    from medvault.recovery.postgres import (
        PhysicalRestoreOptions,
        ServerAccess,
        make_target,
        restore_physical,
        start_and_wait,
    )
    from medvault.verification.drills import Check, cleanup_check, cleanup_timer
    from medvault.verification.scratch import PGDATA, make_scratch, remove_scratch

    add = result.checks.append
    facts = PhysicalFacts.of(snapshot)
    pg_ctl = find_program("pg_ctl", pg_bin, facts.major)
    scratch = make_scratch(
        scratch_parent, kind="physical", source=snapshot.source, snapshot=snapshot.id
    )
    pgdata = os.path.join(scratch, PGDATA)
    spool = os.path.join(scratch, "wal")
    socket_dir = os.path.join(scratch, "socket")
    script = os.path.join(scratch, "restore_wal")
    feeder: WalFeeder | None = None
    access: ServerAccess | None = None
    try:
        os.mkdir(spool, 0o700)
        os.mkdir(socket_dir, 0o700)
        write_private_file(
            script,
            RESTORE_SCRIPT.format(spool=shlex.quote(spool), plan=PLAN, complete=COMPLETE),
            0o700,
        )
        target = make_target(target="latest" if to_latest else "immediate")
        port = _free_port()
        spaces = {
            str(oid): os.path.join(scratch, "tablespaces", str(oid)) for oid in facts.tablespaces
        }
        restored = restore_physical(
            repo,
            snapshot,
            PhysicalRestoreOptions(
                pgdata=pgdata,
                target=target,
                restore_command=f"{shlex.quote(script)} %f %p",
                port=port,
                tablespaces=spaces,
                pg_bin=pg_bin,
            ),
        )
        files = restored.files
        add(
            Check(
                "restore",
                True,
                f"{files.files} files, {files.bytes_written} bytes in {files.duration:.1f} s",
                round(files.duration, 3),
            )
        )
        _isolate(pgdata, scratch, socket_dir, port, options.shared_buffers)
        plan = wal_plan(repo, snapshot, restored.wal)
        write_private_file(os.path.join(spool, PLAN), "\n".join(plan) + "\n")
        run_as, uid, gid = _server_account(pgdata)
        if run_as is not None:
            _chown_tree(scratch, uid, gid)
            os.chmod(scratch, 0o700)
        # initdb names the superuser after the OS account that ran it, usually the data's
        # owner; else the source's own role.
        roles = tuple(
            dict.fromkeys(r for r in (run_as or _login_name(), dsn_user, "postgres") if r)
        )
        access = ServerAccess(host=socket_dir, users=roles, run_as=run_as)
        feeder = WalFeeder(
            repo, snapshot.source, spool, plan, (uid, gid) if run_as is not None else None
        )
        feeder.start()
        began = time.monotonic()
        reached = start_and_wait(
            pgdata,
            pg_ctl,
            port,
            "promote",
            access=access,
            failed=lambda: feeder.error if feeder is not None else None,
        )
        faults.point("drill.server-running")
        how = "the newest archived WAL" if to_latest else "the end of the backup"
        took = time.monotonic() - began
        add(
            Check(
                "recovery",
                True,
                f"replayed to {how} (LSN {reached.lsn}"
                f"{', ' + reached.time if reached.time else ''}; {feeder.fetched} archived WAL "
                f"file(s) fetched) and promoted in {took:.1f} s",
                round(took, 3),
            )
        )
        _validate(access, port, options, add)
    finally:
        with cleanup_timer(result):
            still_running: int | None = None
            try:
                if feeder is not None:
                    feeder.stop()
                if access is not None or os.path.exists(os.path.join(pgdata, "postmaster.pid")):
                    still_running = _stop_server(pgdata, pg_ctl, access or ServerAccess())
            finally:
                # Never a data directory deleted under a running server: the next drill
                # stops that server, then removes the scratch.
                problem = (
                    f"its PostgreSQL server (pid {still_running}) could not be stopped"
                    if still_running is not None
                    else remove_scratch(scratch)
                )
                if problem is not None:
                    add(cleanup_check(scratch, problem))


def _login_name() -> str | None:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


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
        except psycopg.Error as exc:
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
            except psycopg.Error as exc:
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


def _validate(
    access: ServerAccess, port: int, options: DrillOptions, add: Callable[[Check], None]
) -> None:
    """Every table counted and every B-tree index checked, by CHECKERS connections sharing
    one largest-first list: validation is most of a drill's own time."""
    import psycopg

    from medvault.verification.drills import Check

    began = time.monotonic()
    try:
        conn = access.connect(port)
    except psycopg.Error as exc:
        raise RecoveryFailed(f"the restored copy took no connection: {first_line(exc)}") from None
    with conn:
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
        except psycopg.Error as exc:
            for query in options.queries:
                add(Check(f"check: {query}", False, f"{database}: {first_line(exc)}"))
            return
        with conn:
            run_user_checks(conn, options.queries, add)


def run_user_checks(conn: Any, queries: tuple[str, ...], add: Callable[[Check], None]) -> None:
    """Each query passes when its first value is true; an error or no row fails it."""
    import psycopg

    from medvault.verification.drills import Check, elapsed

    for query in queries:
        began = time.monotonic()
        try:
            row = conn.execute(query).fetchone()
        except psycopg.Error as exc:
            add(Check(f"check: {query}", False, first_line(exc), elapsed(began)))
            continue
        value = row[0] if row else None
        add(Check(f"check: {query}", value is True, f"returned {value!r}", elapsed(began)))
