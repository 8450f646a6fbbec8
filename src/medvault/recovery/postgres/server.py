"""Starting a restored server and waiting until recovery ends the way the target action says
(promoted, paused, shut down at the target, or a standby), reading what it reached from the
server, its log and pg_control."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from medvault import childenv
from medvault.errors import RecoveryFailed
from medvault.postgres.datadir import read_control_data, running_postmaster
from medvault.postgres.lsn import segment_timeline
from medvault.postgres.server import connect, server_errors

LOG_NAME = "medvault-recovery.log"
WAIT_TIMEOUT_S = 3600.0
POLL_FIRST_S = 0.02
POLL_MAX_S = 0.3
NOT_REACHED = "recovery ended before configured recovery target was reached"


@dataclass
class Reached:
    state: str  # promoted, paused, shut down, standby
    lsn: str | None = None
    time: str | None = None
    timeline: int | None = None
    port: int | None = None
    log: str = ""
    stop_reason: str | None = None


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as handle:
            text = handle.read()[-20000:]
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ServerAccess:
    """How to reach and run a restored server: TCP on 127.0.0.1 by default, or a private
    socket directory (drills); `run_as` names the OS user pg_ctl runs as when medvault is
    root (PostgreSQL refuses root); `users` the roles to log in as, tried in order (the
    first that exists is kept: a restored cluster's roles are production's, not ours);
    `carries` the values the server needs beyond a minimal environment (childenv.py)."""

    host: str = "127.0.0.1"
    users: tuple[str, ...] = ()
    run_as: str | None = None
    carries: dict[str, str] = field(default_factory=dict)

    def connect(self, port: int, dbname: str = "postgres", timeout: int = 3) -> Any:
        """A connection to the restored server, or RecoveryFailed saying why not."""
        candidates: tuple[str | None, ...] = self.users or (None,)
        for number, user in enumerate(candidates):
            try:
                conn = connect(
                    host=self.host,
                    port=port,
                    dbname=dbname,
                    user=user,
                    timeout=timeout,
                    application_name="medvault-recovery",
                    what="the restored server",
                    fails_as=RecoveryFailed,
                )
            except RecoveryFailed as exc:
                missing_role = f'role "{user}" does not exist' in str(exc)
                if not missing_role or number == len(candidates) - 1:
                    raise
                continue
            if user is not None and number:
                self.users = (user, *(u for u in self.users if u != user))
            return conn
        raise AssertionError("unreachable")

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """A PostgreSQL program, as `run_as` when set, in the server's environment: this
        process's locale (a server recovered with --start may go on serving and keeps the
        locale it was given), none of its secrets."""
        identity: dict[str, Any] = {}
        if self.run_as is not None:
            import pwd

            account = pwd.getpwnam(self.run_as)
            identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=timeout,
            env=childenv.for_server(self.run_as, self.carries),
            **identity,
        )


_STOP = re.compile(r"LOG:\s+(recovery stopping [^\n]*)")
_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_LAST_XACT = re.compile(r"last completed transaction was at log time ([^\n]+)")
_TIMELINE = re.compile(r"selected new timeline ID: (\d+)")


def _from_log(text: str, reached: Reached) -> None:
    if m := _STOP.findall(text):
        reached.stop_reason = m[-1].strip()
    if reached.lsn is None and (m := _REDO_DONE.findall(text)):
        reached.lsn = m[-1]
    if reached.time is None and (m := _LAST_XACT.findall(text)):
        reached.time = m[-1].strip()
    if reached.timeline is None and (m := _TIMELINE.findall(text)):
        reached.timeline = int(m[-1])


def _from_control_data(pgdata: str, pg_ctl: str, reached: Reached) -> None:
    """A server shut down at its target: where it stopped, from pg_control."""
    fields = read_control_data(pgdata, os.path.dirname(pg_ctl))
    if fields is None:
        return
    reached.lsn = fields.get("Minimum recovery ending location") or reached.lsn
    tli = fields.get("Min recovery ending loc's timeline", "")
    reached.timeline = int(tli) if tli.isdigit() else reached.timeline
    if reached.time is None and reached.stop_reason and ", time " in reached.stop_reason:
        reached.time = reached.stop_reason.rsplit(", time ", 1)[1]


def _read_log(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def start_and_wait(
    pgdata: str,
    pg_ctl: str,
    port: int,
    action: str,
    timeout: float = WAIT_TIMEOUT_S,
    access: ServerAccess | None = None,
    failed: Callable[[], str | None] | None = None,
) -> Reached:
    """Start the restored server and wait until recovery is over the way `action` says:
    promote (out of recovery), pause (replay paused at the target), shutdown (the server
    stopped at the target), standby (consistent and accepting read-only connections).
    `failed` may report a reason to give up (e.g. WAL that could not be supplied)."""
    access = access or ServerAccess()
    log = os.path.join(pgdata, "log", LOG_NAME)
    if not os.path.isdir(os.path.dirname(log)):
        os.makedirs(os.path.dirname(log), mode=0o700)
        st = os.stat(pgdata)
        if os.geteuid() == 0:
            os.chown(os.path.dirname(log), st.st_uid, st.st_gid)
    done = access.run([pg_ctl, "-D", pgdata, "-l", log, "-W", "-s", "start"], timeout=120)
    if done.returncode != 0:
        raise RecoveryFailed(
            f"pg_ctl could not start the restored server in {pgdata}: "
            f"{(done.stderr or done.stdout).strip()}\n{log_tail(log)}"
        )
    began = time.monotonic()
    seen_pid = False
    # Short replays (a drill to the end of its backup) finish within a few hundred ms: poll
    # often at first, then back off so an hour-long replay is not probed 20 times a second.
    pause = POLL_FIRST_S
    while True:
        text = _read_log(log)
        if NOT_REACHED in text:
            last = _LAST_XACT.findall(text)
            newest = f"; the newest archived commit is at {last[-1].strip()}" if last else ""
            raise RecoveryFailed(
                "the restored server replayed all archived WAL without reaching the recovery "
                "target (a time with no later commit in the archive, an xid that never "
                f"committed, or a restore point that does not exist){newest}; server log:\n"
                f"{log_tail(log)}"
            )
        reason = failed() if failed is not None else None
        if reason is not None:
            raise RecoveryFailed(reason)
        pid = running_postmaster(pgdata)
        seen_pid = seen_pid or pid is not None
        if pid is None and (seen_pid or time.monotonic() - began > 30):
            reached = Reached("shut down", port=port, log=log)
            _from_log(text, reached)
            if action == "shutdown" and reached.stop_reason is not None:
                _from_control_data(pgdata, pg_ctl, reached)
                return reached
            raise RecoveryFailed(
                f"the restored server stopped during recovery; server log:\n{log_tail(log)}"
            )
        if pid is not None:
            found = _probe_when_up(access, port, action, log)
            if found is not None:
                _from_log(_read_log(log), found)
                return found
        if time.monotonic() - began > timeout:
            raise RecoveryFailed(
                f"recovery did not finish within {timeout:.0f} s; the server is still running "
                f"(stop it with pg_ctl -D {pgdata} stop); server log:\n{log_tail(log)}"
            )
        time.sleep(pause)
        pause = min(pause * 1.5, POLL_MAX_S)


def _probe_when_up(access: ServerAccess, port: int, action: str, log: str) -> Reached | None:
    """What the server has reached; None while it refuses connections or drops them
    (starting up, not yet consistent, shutting down at the target)."""
    import psycopg

    try:
        conn = access.connect(port)
    except RecoveryFailed:
        return None
    with conn, server_errors("the restored server", RecoveryFailed):
        try:
            return _probe(conn, action, port, log)
        except psycopg.OperationalError:
            return None


def _probe(conn: Any, action: str, port: int, log: str) -> Reached | None:
    row = conn.execute(
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
        " pg_last_xact_replay_timestamp(),"
        " (SELECT timeline_id FROM pg_control_checkpoint())"
    ).fetchone()
    in_recovery, replay_lsn, replay_time, checkpoint_tli = row
    when = replay_time.astimezone(UTC).isoformat() if replay_time is not None else None
    if action in ("promote", "shutdown") and not in_recovery:
        current = conn.execute(
            "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())"
        ).fetchone()
        return Reached(
            "promoted",
            replay_lsn or current[0],
            when,
            segment_timeline(current[1]),
            port,
            log,
        )
    if action == "pause" and in_recovery:
        state = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0]
        if state == "paused":
            return Reached("paused", replay_lsn, when, int(checkpoint_tli), port, log)
    if action == "standby" and in_recovery:
        return Reached("standby", replay_lsn, when, int(checkpoint_tli), port, log)
    return None
