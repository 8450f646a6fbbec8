"""What a data directory tells without a server: the cluster's system identifier from
global/pg_control, the fields pg_controldata prints, the major version in PG_VERSION, and
the postmaster that postmaster.pid names."""

from __future__ import annotations

import os
import subprocess

from medvault import childenv

PG_CONTROL = "global/pg_control"


def read_system_identifier(pgdata: str) -> str | None:
    """The cluster's identity: the first 8 bytes of global/pg_control (little-endian)."""
    try:
        with open(os.path.join(pgdata, PG_CONTROL), "rb") as handle:
            raw = handle.read(8)
    except OSError:
        return None
    return str(int.from_bytes(raw, "little")) if len(raw) == 8 else None


def read_major_version(pgdata: str) -> int:
    """The major version in PG_VERSION (OSError or ValueError when it cannot be read)."""
    with open(os.path.join(pgdata, "PG_VERSION"), encoding="ascii") as handle:
        return int(handle.read().strip())


def read_control_data(pgdata: str, bindir: str) -> dict[str, str] | None:
    """pg_controldata's fields ("Minimum recovery ending location": "0/3000100", ...), run
    from `bindir`; None when it cannot be run."""
    program = os.path.join(bindir, "pg_controldata")
    try:
        done = subprocess.run(
            [program, "-D", pgdata],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            env=childenv.for_server() | {"LC_ALL": "C"},
        )
    except OSError:
        return None
    return dict(
        (key.strip(), value.strip())
        for key, sep, value in (line.partition(":") for line in done.stdout.splitlines())
        if sep
    )


def running_postmaster(pgdata: str) -> int | None:
    """The pid of a live server using pgdata, from postmaster.pid."""
    try:
        with open(os.path.join(pgdata, "postmaster.pid")) as handle:
            pid = int(handle.readline().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, owned by another user
    return pid
