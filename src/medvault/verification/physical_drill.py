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

One module per part: drill_cluster.py (the throwaway cluster: its account, isolation,
port, and stopping it), drill_wal.py (the WAL plan and its feeder), drill_validation.py
(counts and amcheck), user_checks.py (the user's SQL, for logical drills too).
"""

from __future__ import annotations

import os
import pwd
import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault import faults
from medvault.postgres.facts import PhysicalFacts
from medvault.recovery.postgres import write_private_file
from medvault.verification.drill_cluster import (
    chown_tree,
    free_port,
    isolate,
    server_account,
    stop_server,
)
from medvault.verification.drill_validation import validate
from medvault.verification.drill_wal import COMPLETE, PLAN, RESTORE_SCRIPT, WalFeeder, wal_plan

if TYPE_CHECKING:
    from medvault.recovery.postgres import ServerAccess
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.verification.drills import DrillResult


@dataclass(frozen=True)
class DrillOptions:
    """User checks (SQL whose first value must be true, run in `database`) and the
    throwaway cluster's memory."""

    queries: tuple[str, ...] = ()
    database: str | None = None
    shared_buffers: str = "128MB"


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
        port = free_port()
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
        isolate(pgdata, scratch, socket_dir, port, options.shared_buffers)
        plan = wal_plan(repo, snapshot, restored.wal)
        write_private_file(os.path.join(spool, PLAN), "\n".join(plan) + "\n")
        run_as, uid, gid = server_account(pgdata)
        if run_as is not None:
            chown_tree(scratch, uid, gid)
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
        validate(access, port, options, add)
    finally:
        with cleanup_timer(result):
            still_running: int | None = None
            try:
                if feeder is not None:
                    feeder.stop()
                if access is not None or os.path.exists(os.path.join(pgdata, "postmaster.pid")):
                    still_running = stop_server(pgdata, pg_ctl, access or ServerAccess())
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
