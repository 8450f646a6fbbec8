"""A physical backup recovered in scratch space by a throwaway server on a private socket:
what a physical drill validates, and what restore-table reads one table from.

Isolation is the drill's (drill_cluster.py): no TCP address, a socket in a private directory,
local trust, archiving off, no standbys, no SSL. The WAL is fetched by this process into a
spool a bounded distance ahead of replay (drill_wal.py): the server never needs the
repository's key. `close` stops the server and removes the scratch directory; a caller calls
it in a `finally`, so the copy goes on error and on Ctrl-C too.
"""

from __future__ import annotations

import os
import pwd
import shlex
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
from medvault.verification.drill_wal import COMPLETE, PLAN, RESTORE_SCRIPT, WalFeeder, wal_plan

if TYPE_CHECKING:
    from medvault.recovery.postgres import (
        PhysicalRestoreResult,
        Reached,
        RecoveryTarget,
        ServerAccess,
    )
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository


class ScratchCluster:
    """`restore()` the files, then `recover()` them to the target and promote; `close()`
    always. Made with its scratch directory (marked as this process's, see scratch.py)."""

    def __init__(
        self,
        repo: Repository,
        snapshot: Snapshot,
        scratch_parent: str | None,
        *,
        target: RecoveryTarget,
        pg_bin: str | None,
        dsn_user: str | None,
        shared_buffers: str = "128MB",
        purpose: str = "physical",
    ) -> None:
        from medvault.postgres.programs import find_program
        from medvault.verification.scratch import PGDATA, make_scratch

        self.repo = repo
        self.snapshot = snapshot
        self.target = target
        self.pg_bin = pg_bin
        self.dsn_user = dsn_user
        self.shared_buffers = shared_buffers
        self.facts = PhysicalFacts.of(snapshot)
        self.pg_ctl = find_program("pg_ctl", pg_bin, self.facts.major)
        self.scratch = make_scratch(
            scratch_parent, kind=purpose, source=snapshot.source, snapshot=snapshot.id
        )
        self.pgdata = os.path.join(self.scratch, PGDATA)
        self.spool = os.path.join(self.scratch, "wal")
        self.socket_dir = os.path.join(self.scratch, "socket")
        self.port = 0
        self.access: ServerAccess | None = None
        self.feeder: WalFeeder | None = None
        self.restored: PhysicalRestoreResult | None = None

    def restore(self) -> PhysicalRestoreResult:
        """The backup's files into the scratch data directory, set up to recover to the
        target through the spool's restore script."""
        from medvault.recovery.postgres import PhysicalRestoreOptions, restore_physical

        os.mkdir(self.spool, 0o700)
        os.mkdir(self.socket_dir, 0o700)
        script = os.path.join(self.scratch, "restore_wal")
        write_private_file(
            script,
            RESTORE_SCRIPT.format(spool=shlex.quote(self.spool), plan=PLAN, complete=COMPLETE),
            0o700,
        )
        self.port = free_port()
        spaces = {
            str(oid): os.path.join(self.scratch, "tablespaces", str(oid))
            for oid in self.facts.tablespaces
        }
        self.restored = restore_physical(
            self.repo,
            self.snapshot,
            PhysicalRestoreOptions(
                pgdata=self.pgdata,
                target=self.target,
                restore_command=f"{shlex.quote(script)} %f %p",
                port=self.port,
                tablespaces=spaces,
                pg_bin=self.pg_bin,
            ),
        )
        return self.restored

    def recover(self) -> Reached:
        """Start the throwaway server on its private socket, feed it the WAL, and wait until
        it reached the target and was promoted."""
        from medvault.recovery.postgres import ServerAccess, start_and_wait

        assert self.restored is not None, "restore() first"
        isolate(self.pgdata, self.scratch, self.socket_dir, self.port, self.shared_buffers)
        plan = wal_plan(self.repo, self.snapshot, self.restored.wal)
        write_private_file(os.path.join(self.spool, PLAN), "\n".join(plan) + "\n")
        run_as, uid, gid = server_account(self.pgdata)
        if run_as is not None:
            chown_tree(self.scratch, uid, gid)
            os.chmod(self.scratch, 0o700)
        # initdb names the superuser after the OS account that ran it, usually the data's
        # owner; else the source's own role.
        roles = tuple(
            dict.fromkeys(r for r in (run_as or _login_name(), self.dsn_user, "postgres") if r)
        )
        self.access = access = ServerAccess(host=self.socket_dir, users=roles, run_as=run_as)
        self.feeder = feeder = WalFeeder(
            self.repo,
            self.snapshot.source,
            self.spool,
            plan,
            (uid, gid) if run_as is not None else None,
        )
        feeder.start()
        reached = start_and_wait(
            self.pgdata,
            self.pg_ctl,
            self.port,
            "promote",
            access=access,
            failed=lambda: feeder.error,
        )
        faults.point("drill.server-running")
        return reached

    @property
    def wal_fetched(self) -> int:
        return self.feeder.fetched if self.feeder is not None else 0

    def close(self) -> str | None:
        """Stop the server and remove the scratch directory: None when both are gone, else
        what is left. A data directory is never deleted under a running server (the next
        drill, or `medvault status`, finds it and stops that server)."""
        from medvault.recovery.postgres import ServerAccess
        from medvault.verification.scratch import remove_scratch

        still_running: int | None = None
        try:
            if self.feeder is not None:
                self.feeder.stop()
            if self.access is not None or os.path.exists(
                os.path.join(self.pgdata, "postmaster.pid")
            ):
                still_running = stop_server(self.pgdata, self.pg_ctl, self.access or ServerAccess())
        finally:
            problem = (
                f"its PostgreSQL server (pid {still_running}) could not be stopped"
                if still_running is not None
                else remove_scratch(self.scratch)
            )
        return problem


def _login_name() -> str | None:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None
