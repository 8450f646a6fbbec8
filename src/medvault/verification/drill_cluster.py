"""A physical drill's throwaway cluster: the account it runs as, the settings that keep it to
itself (a private socket, local trust, no archiving, no standbys, no SSL), a port, and
stopping it (also one a killed drill left running).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from typing import TYPE_CHECKING

from medvault.errors import MedvaultError, RecoveryFailed
from medvault.recovery.postgres import write_private_file

if TYPE_CHECKING:
    from medvault.recovery.postgres import ServerAccess


def server_account(pgdata: str) -> tuple[str | None, int, int]:
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


def chown_tree(path: str, uid: int, gid: int) -> None:
    for dirpath, dirs, files in os.walk(path):
        os.chown(dirpath, uid, gid, follow_symlinks=False)
        for name in [*dirs, *files]:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def isolate(pgdata: str, scratch: str, socket_dir: str, port: int, shared_buffers: str) -> None:
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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_server(pgdata: str, pg_ctl: str | None, access: ServerAccess) -> int | None:
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
        run_as = server_account(pgdata)[0]
        pg_ctl: str | None = find_program("pg_ctl", pg_bin, read_major_version(pgdata))
    except (MedvaultError, OSError, ValueError):
        run_as, pg_ctl = None, None  # pg_ctl cannot be run for it: signals alone
    left = stop_server(pgdata, pg_ctl, ServerAccess(run_as=run_as))
    if left is None:
        return None
    return (
        f"its PostgreSQL server (pid {left}) could not be stopped; stop it "
        f"(pg_ctl stop -m immediate -D {pgdata})"
    )
