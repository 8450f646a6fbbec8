"""Restore drills: restore a snapshot into scratch space, validate it, time it, record it.

A drill is what an auditor asks for: not "the backup ran" but "we restored it, this is what we
checked, it took this long". Scratch space is always removed, also after a failure or Ctrl-C
(the restored data is patient data: it must not outlive the drill). Results are sealed objects
`drills/<time>-<snapshot>-<rand>` in the repository, so they travel with the backups they prove.

Scratch directories are made, removed and found again by verification/scratch.py: a
cleanup never ignores an error, a drill whose copy cannot be removed fails naming what is
left, and each drill first removes the scratch of drills on this host that were killed
before they could remove their own.

Kinds: files (restore into a private scratch directory; every file's content is verified
on the way by the restore itself, then sizes and counts are compared with the snapshot);
logical PostgreSQL dumps (restore into a temporary database on the source's server; every
table's row count is compared with the counts recorded at backup); physical PostgreSQL
backups (a throwaway cluster: see physical_drill.py). User checks from `[source.NAME.drill]`
run against the restored PostgreSQL copy of either kind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import stat
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from medvault import faults
from medvault.dirpath import walk
from medvault.errors import (
    IntegrityError,
    MedvaultError,
    ObjectNotFound,
    RecoveryFailed,
    UsageError,
    first_line,
)
from medvault.repository.keys import now_iso
from medvault.repository.records import DRILLS, KIND_DRILL, json_object
from medvault.verification.scratch import (
    database_of_ended_drill,
    make_scratch,
    remove_scratch,
    scratch_database_name,
    sweep,
)

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable, Iterator

    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.verification.physical_drill import DrillOptions

FOLDER = DRILLS


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    seconds: float | None = None  # how long the step took, where it is a step of its own


@dataclass
class DrillResult:
    snapshot: str
    source: str
    kind: str
    started: str
    rto_s: float = 0.0  # restore, replay and validation: not the clean-up after
    cleanup_s: float = 0.0
    rto_target_s: float | None = None
    ok: bool = False
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    id: str = ""

    @property
    def within_rto(self) -> bool | None:
        return None if self.rto_target_s is None else self.rto_s <= self.rto_target_s


def run_drill(
    repo: Repository,
    snapshot: Snapshot,
    *,
    rto: dt.timedelta | None = None,
    scratch: str | None = None,
    dsn: str | None = None,
    pg_bin: str | None = None,
    to_latest: bool = False,
    options: DrillOptions | None = None,
) -> DrillResult:
    from medvault.verification.physical_drill import DrillOptions

    result = DrillResult(snapshot.id, snapshot.source, snapshot.kind, now_iso())
    result.rto_target_s = rto.total_seconds() if rto is not None else None
    options = options or DrillOptions()
    started = time.monotonic()
    _remove_leftovers(scratch, pg_bin, result)
    try:
        if to_latest and snapshot.kind != "postgres.physical":
            raise UsageError("--to-latest replays WAL: it applies to physical backups only")
        if snapshot.kind == "files":
            _drill_files(repo, snapshot, scratch, result)
        elif snapshot.kind == "postgres.logical":
            if dsn is None:
                raise UsageError(
                    f"source {snapshot.source} has no dsn in medvault.toml to restore into"
                )
            _drill_logical(repo, snapshot, dsn, pg_bin, options, result)
        elif snapshot.kind == "postgres.csv":
            if dsn is None:
                raise UsageError(
                    f"source {snapshot.source} has no dsn in medvault.toml to restore into"
                )
            _drill_csv(repo, snapshot, dsn, result)
        elif snapshot.kind == "postgres.physical":
            from medvault.postgres.server import dsn_field
            from medvault.verification.physical_drill import run_physical_drill

            run_physical_drill(
                repo,
                snapshot,
                scratch,
                to_latest=to_latest,
                pg_bin=pg_bin,
                dsn_user=dsn_field(dsn, "user"),
                options=options,
                result=result,
            )
        elif snapshot.kind == "redis":
            from medvault.verification.redis_drill import drill_redis

            drill_redis(repo, snapshot, scratch, result)
        else:
            raise UsageError(f"there is no drill for {snapshot.kind} snapshots")
        result.ok = all(check.ok for check in result.checks)
    except MedvaultError as exc:
        result.error = str(exc)
        result.ok = False
    finally:
        result.rto_s = round(time.monotonic() - started - result.cleanup_s, 3)
    if result.ok and result.within_rto is False:
        result.checks.append(
            Check("rto", False, f"took {result.rto_s:.1f} s, the tier allows {rto}")
        )
        result.ok = False
    return result


def _remove_leftovers(scratch: str | None, pg_bin: str | None, result: DrillResult) -> None:
    """Scratch left in this drill's scratch root by drills that were killed (SIGKILL, the
    OOM killer), and the PostgreSQL servers they left running on it: patient data no drill
    will remove otherwise. One that cannot be removed fails this drill, which names it."""
    from medvault.verification.scratch import scratch_root

    with cleanup_timer(result):
        swept = sweep([scratch_root(scratch)], pg_bin)
    for item in swept:
        detail = f"removed {item.leftover.describe()}"
        if item.leftover.server is not None:
            detail += (
                ", after stopping the PostgreSQL server the drill had left running on it "
                f"(pid {item.leftover.server})"
            )
        if item.problem is not None:
            detail = (
                f"{item.leftover.describe()} holds a restored copy and could not be removed: "
                f"{item.problem}; remove it by hand"
            )
        result.checks.append(Check("leftover scratch", item.problem is None, detail))


def cleanup_check(scratch: str, problem: str) -> Check:
    """The check a drill fails when its scratch copy cannot be removed."""
    return Check(
        "cleanup",
        False,
        f"the drill's copy in {scratch} could not be removed: {problem}; remove it by hand",
    )


def _drill_files(
    repo: Repository, snapshot: Snapshot, scratch: str | None, result: DrillResult
) -> None:
    from medvault.recovery.files import restore_files

    workspace = make_scratch(scratch, kind="files", source=snapshot.source, snapshot=snapshot.id)
    # A directory of its own: the snapshot may hold any name, the marker's among them.
    target = os.path.join(workspace, "files")
    try:
        began = time.monotonic()
        restored = restore_files(repo, snapshot, target)
        result.checks.append(
            Check(
                "restore",
                True,
                f"{restored.files} files, {restored.bytes_written} bytes",
                elapsed(began),
            )
        )
        began = time.monotonic()
        expected_files = (
            int(snapshot.stats.get("files_new", 0))
            + int(snapshot.stats.get("files_changed", 0))
            + int(snapshot.stats.get("files_unchanged", 0))
        )
        expected_bytes = int(snapshot.stats.get("total_bytes", restored.bytes_written))
        try:
            files, size = _count(target)
        except OSError as exc:
            where = os.fsdecode(exc.filename) if exc.filename else target
            reason = f"the restored copy cannot be read back: {where}: {exc.strerror}"
            result.checks.append(Check("files", False, reason, elapsed(began)))
            return
        result.checks.append(
            Check(
                "files",
                files == expected_files and size == expected_bytes,
                f"{files} files, {size} bytes on disk; the snapshot says {expected_files} "
                f"files, {expected_bytes} bytes",
                elapsed(began),
            )
        )
    finally:
        faults.point("drill.before-cleanup")
        with cleanup_timer(result):
            problem = remove_scratch(workspace)
        if problem is not None:
            result.checks.append(cleanup_check(workspace, problem))


def elapsed(began: float) -> float:
    """Seconds since a time.monotonic() reading, as drill results record them."""
    return round(time.monotonic() - began, 3)


@contextlib.contextmanager
def cleanup_timer(result: DrillResult) -> Iterator[None]:
    """Time spent removing the scratch copy: part of the drill, not of the recovery."""
    began = time.monotonic()
    try:
        yield
    finally:
        result.cleanup_s = round(result.cleanup_s + time.monotonic() - began, 3)


def _count(root: str) -> tuple[int, int]:
    """Regular files below root and their bytes (walked through directory descriptors: the
    restored tree may be deeper than any path a system call takes)."""
    files = size = 0
    for _dirs, _name, st in walk(root):
        if stat.S_ISREG(st.st_mode):
            files += 1
            size += st.st_size
    return files, size


def _drill_logical(
    repo: Repository,
    snapshot: Snapshot,
    dsn: str,
    pg_bin: str | None,
    options: DrillOptions,
    result: DrillResult,
) -> None:
    from medvault.postgres.server import connect
    from medvault.recovery.postgres_logical import restore_logical
    from medvault.verification.user_checks import run_user_checks

    _drop_leftover_databases(dsn, result)
    database = scratch_database_name()
    began = time.monotonic()
    try:
        restored = restore_logical(repo, snapshot, dsn=dsn, database=database, pg_bin=pg_bin)
        result.checks.append(
            Check(
                "row counts",
                True,
                f"{len(restored.row_counts)} tables, "
                f"{sum(restored.row_counts.values())} rows, equal to the counts at backup",
                elapsed(began),  # the restore and the counts it compares
            )
        )
        if options.queries:
            with connect(dsn, dbname=database, what="the drill's copy") as conn:
                run_user_checks(conn, options.queries, result.checks.append)
    except IntegrityError as exc:
        result.checks.append(Check("row counts", False, str(exc), elapsed(began)))
    finally:
        faults.point("drill.before-cleanup")
        with cleanup_timer(result):
            problem = _drop_database(dsn, database)
        if problem is not None:
            # The copy holds patient data: a drill that cannot remove it has failed.
            result.checks.append(
                Check(
                    "cleanup",
                    False,
                    f"the drill's copy, database {database}, could not be dropped: {problem}; "
                    f'drop it by hand (DROP DATABASE "{database}" WITH (FORCE))',
                )
            )


def _drill_csv(repo: Repository, snapshot: Snapshot, dsn: str, result: DrillResult) -> None:
    """A CSV export loaded into a scratch database (made from the server's default
    template, so types a DBA installed there exist): every table created from its recorded
    columns and types, its rows loaded with COPY and counted."""
    from psycopg import sql

    from medvault.postgres.server import connect, server_errors
    from medvault.recovery.postgres_csv import restore_csv

    _drop_leftover_databases(dsn, result)
    database = scratch_database_name()
    began = time.monotonic()
    try:
        with (
            connect(dsn, what="the drill's server") as conn,
            server_errors("creating the drill's database", RecoveryFailed),
        ):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        restored = restore_csv(repo, snapshot, dsn=dsn, database=database)
        rows = sum(t.rows for t in restored.tables)
        result.checks.append(
            Check(
                "row counts",
                True,
                f"{len(restored.tables)} tables, {rows} rows, equal to the counts at backup",
                elapsed(began),
            )
        )
    except IntegrityError as exc:
        result.checks.append(Check("row counts", False, str(exc), elapsed(began)))
    finally:
        faults.point("drill.before-cleanup")
        with cleanup_timer(result):
            problem = _drop_database(dsn, database)
        if problem is not None:
            result.checks.append(
                Check(
                    "cleanup",
                    False,
                    f"the drill's copy, database {database}, could not be dropped: {problem}; "
                    f'drop it by hand (DROP DATABASE "{database}" WITH (FORCE))',
                )
            )


def _drop_leftover_databases(dsn: str, result: DrillResult) -> None:
    """Databases left on the server by logical drills from this host that were killed
    before they could drop them: copies of patient data no drill would remove otherwise."""
    import psycopg

    from medvault.postgres.server import connect

    try:
        with connect(dsn, what="the drill's server") as conn:
            names = [str(row[0]) for row in conn.execute("SELECT datname FROM pg_database")]
    except psycopg.Error:
        return  # the drill itself will say why the server cannot be used
    for name in filter(database_of_ended_drill, names):
        with cleanup_timer(result):
            problem = _drop_database(dsn, name)
        detail = f"dropped database {name}, left by a drill that is no longer running"
        if problem is not None:
            detail = (
                f"database {name}, left by a drill that is no longer running, could not be "
                f'dropped: {problem}; drop it by hand (DROP DATABASE "{name}" WITH (FORCE))'
            )
        result.checks.append(Check("leftover scratch", problem is None, detail))


def _drop_database(dsn: str, database: str) -> str | None:
    """None once the database is gone, else why not."""
    import psycopg

    from medvault.postgres.server import connect

    try:
        with connect(dsn, what="the drill's server") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    except MedvaultError as exc:
        return str(exc)
    except psycopg.Error as exc:
        return first_line(exc)
    return None


def store_result(repo: Repository, result: DrillResult) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # Random too: two drills of one snapshot may start in the same second (a scheduled one
    # and one by hand), and each result must be kept.
    result.id = f"{stamp}-{result.snapshot[:12]}-{secrets.token_hex(3)}"
    body = json.dumps(asdict(result), sort_keys=True).encode()
    repo.store_record(f"{FOLDER}/{result.id}", body, KIND_DRILL)
    return result.id


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# What each stored field may hold; records written before a field existed lack it.
_RESULT_FIELDS: dict[str, Callable[[object], bool]] = {
    "snapshot": lambda v: isinstance(v, str),
    "source": lambda v: isinstance(v, str),
    "kind": lambda v: isinstance(v, str),
    "started": lambda v: isinstance(v, str),
    "rto_s": _number,
    "cleanup_s": _number,
    "rto_target_s": lambda v: v is None or _number(v),
    "ok": lambda v: isinstance(v, bool),
    "checks": lambda v: isinstance(v, list),
    "error": lambda v: v is None or isinstance(v, str),
    "id": lambda v: isinstance(v, str),
}
_CHECK_FIELDS: dict[str, Callable[[object], bool]] = {
    "name": lambda v: isinstance(v, str),
    "ok": lambda v: isinstance(v, bool),
    "detail": lambda v: isinstance(v, str),
    "seconds": lambda v: v is None or _number(v),
}


def _checked(
    doc: object, rules: dict[str, Callable[[object], bool]], required: int
) -> dict[str, Any]:
    """`doc` when it is a JSON object whose fields all follow `rules` and that holds the
    first `required` of them."""
    if not isinstance(doc, dict) or not set(list(rules)[:required]) <= set(doc):
        raise IntegrityError("drill record is malformed")
    for key, value in doc.items():
        rule = rules.get(key)
        if rule is None or not rule(value):
            raise IntegrityError(f"drill record has a malformed {key!r}")
    return doc


def decode_result(plaintext: bytes) -> DrillResult:
    """A drill record's JSON, every field checked (a key holder can seal anything)."""
    doc = _checked(json_object(plaintext, "drill record"), _RESULT_FIELDS, required=4)
    checks = [Check(**_checked(c, _CHECK_FIELDS, required=2)) for c in doc.get("checks", [])]
    return DrillResult(**{**doc, "checks": checks})


def list_results(repo: Repository) -> list[DrillResult]:
    results = []
    for name in repo.list_records(FOLDER):
        try:
            results.append(decode_result(repo.load_record(name, KIND_DRILL)))
        except (IntegrityError, ObjectNotFound) as exc:
            repo.warnings.append(f"drill record {name} is unreadable: {exc}")
    return sorted(results, key=lambda r: r.started)
