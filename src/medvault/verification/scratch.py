"""Scratch directories of restore drills: made recognisable, removed without ignoring errors,
and found again when a drill was killed before it could remove its own.

A drill's scratch directory holds decrypted patient data. It is made directly in the scratch
root (`--scratch`, else `[drill] scratch` in medvault.toml, else the system's temporary
directory) as `medvault-drill-<pid>.<start>.<random>`, where pid and start (the process's
start time in clock ticks since boot, from /proc) name the drill that owns it, and it holds
a marker file `medvault-drill.json` with the same facts plus host, PID namespace, time,
source and snapshot. A drill that is SIGKILLed or killed by the OOM killer cannot remove its
scratch; the next drill, and `medvault status`, find it there. A scratch directory is the
scratch of a finished drill when its marker says this host and PID namespace (or it has no
readable marker) and its owner's pid no longer runs with that start time; the scratch of a
drill still running, or of one on another host sharing the scratch root, is left alone.

A killed physical drill may also leave its throwaway PostgreSQL server running on the copy
(pg_ctl starts it in a session of its own, so it outlives the drill). Such a server is found
through the data directory's postmaster.pid and stopped before its scratch is removed: a
data directory deleted under a running server goes on serving from open files and memory
until the server notices.

A logical drill's scratch is a database on the source's server, named
`medvault_drill_<host>_<pid>_<start>_<random>` (host: a short hash of this host's name and PID
namespace, since several hosts may drill against one server); the next logical drill from this
host drops those whose drill no longer runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import tempfile
from dataclasses import dataclass

from medvault.dirpath import remove_tree
from medvault.errors import RestoreTargetError
from medvault.processes import host_namespace, process_start
from medvault.repository.keys import now_iso

PREFIX = "medvault-drill-"
MARKER = "medvault-drill.json"
PGDATA = "pgdata"  # a physical drill's data directory, inside its scratch directory
DATABASE_PREFIX = "medvault_drill_"


def scratch_root(chosen: str | None) -> str:
    return chosen or tempfile.gettempdir()


def make_scratch(root: str | None, **about: str) -> str:
    """A new, private (0700) scratch directory in the scratch root, marked as this drill's."""
    pid = os.getpid()
    started = process_start(pid) or "0"
    try:
        path = tempfile.mkdtemp(prefix=f"{PREFIX}{pid}.{started}.", dir=scratch_root(root))
    except OSError as exc:
        raise RestoreTargetError(
            f"cannot make the drill's scratch directory in {scratch_root(root)}: {exc.strerror}"
        ) from exc
    marker = {
        "host": socket.gethostname(),
        "namespace": host_namespace(),
        "pid": pid,
        "process_start": started,
        "started": now_iso(),
        **about,
    }
    fd = os.open(os.path.join(path, MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(marker, handle)
    return path


def remove_scratch(path: str) -> str | None:
    """Remove a scratch directory and everything in it; None when it is gone, else what is
    left and why (every path that could not be removed counts: nothing is ignored)."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return f"{parent}: {exc.strerror}"
    try:
        problems = remove_tree(fd, os.fsencode(name), os.fsencode(parent))
    finally:
        os.close(fd)
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"cannot remove {problems[0]}{more}"


def running_server(pgdata: str) -> int | None:
    """The pid of the PostgreSQL server running on pgdata: the one postmaster.pid names, when
    that process works in pgdata (a postmaster changes into its data directory). A pid file
    left by a crash or a reboot may name a later, unrelated process (production's postmaster
    among them), which is never taken for the drill's server."""
    try:
        with open(os.path.join(pgdata, "postmaster.pid"), encoding="ascii") as handle:
            pid = int(handle.readline().strip() or 0)
        here = os.stat(pgdata)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        there = os.stat(f"/proc/{pid}/cwd")
    except OSError:
        return None  # gone, or another user's process: not a server this drill could stop
    return pid if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino) else None


@dataclass(frozen=True)
class Leftover:
    """A scratch directory no running drill on this host owns."""

    path: str
    owner: str  # who made it, as far as can be told
    started: str | None  # when that drill started, from its marker
    ended: bool  # its drill is known to be over (it ran here and its process is gone)
    server: int | None = None  # pid of the ended drill's PostgreSQL server, still running

    def describe(self) -> str:
        since = f", started {self.started}" if self.started else ""
        return f"{self.path} ({self.owner}{since})"


def find_leftovers(roots: list[str]) -> list[Leftover]:
    """Scratch directories in these roots that no drill running on this host owns: those
    of ended drills, and those whose owner cannot be told from here (another host or
    container sharing the root, or a name without an owner)."""
    found: list[Leftover] = []
    for root in dict.fromkeys(os.path.abspath(r) for r in roots):
        try:
            names = sorted(name for name in os.listdir(root) if name.startswith(PREFIX))
        except OSError:
            continue  # a missing scratch root holds nothing
        for name in names:
            path = os.path.join(root, name)
            if not os.path.isdir(path) or os.path.islink(path):
                continue
            leftover = _leftover(path, name)
            if leftover is not None:
                found.append(leftover)
    return found


def _leftover(path: str, name: str) -> Leftover | None:
    pid, started = _owner_in_name(name)
    marker = _read_marker(path)
    when = str(marker["started"]) if marker and "started" in marker else None
    if marker is not None and (
        marker.get("host") != socket.gethostname() or marker.get("namespace") != host_namespace()
    ):
        owner = (
            f"drill pid {marker.get('pid')} on host {marker.get('host')} or in another container"
        )
        return Leftover(path, f"{owner}: whether it still runs cannot be told here", when, False)
    if pid is None:
        return Leftover(path, "no drill named as its owner", when, False)
    if process_start(pid) == started:
        return None  # its drill is still running
    server = running_server(os.path.join(path, PGDATA))
    return Leftover(path, f"drill pid {pid}, which is no longer running", when, True, server)


def _owner_in_name(name: str) -> tuple[int | None, str]:
    pid, _, rest = name.removeprefix(PREFIX).partition(".")
    started, _, _ = rest.partition(".")
    return (int(pid), started) if pid.isdigit() and started.isdigit() else (None, "")


def _read_marker(path: str) -> dict[str, object] | None:
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class Swept:
    leftover: Leftover
    problem: str | None  # None: removed


def sweep(roots: list[str], pg_bin: str | None = None) -> list[Swept]:
    """Remove the scratch of drills that ran on this host and ended without removing it
    (killed), stopping first the PostgreSQL server such a drill left running on it (with
    the programs in pg_bin, when set; a server that cannot be stopped keeps its scratch).
    Scratch whose owner cannot be told from here is left for the operator (`medvault
    status` lists it): a drill elsewhere may still be using it."""
    swept = []
    for leftover in find_leftovers(roots):
        if not leftover.ended:
            continue
        problem = None
        if leftover.server is not None:
            from medvault.verification.drill_cluster import stop_leftover_server

            problem = stop_leftover_server(os.path.join(leftover.path, PGDATA), pg_bin)
        swept.append(Swept(leftover, problem or remove_scratch(leftover.path)))
    return swept


def _host_tag() -> str:
    seen_as = f"{socket.gethostname()}/{host_namespace()}".encode()
    return hashlib.blake2b(seen_as, digest_size=3).hexdigest()


def scratch_database_name() -> str:
    """A name for a logical drill's database that says which drill owns it (at most 50
    characters: PostgreSQL allows 63)."""
    pid = os.getpid()
    started = process_start(pid) or "0"
    return f"{DATABASE_PREFIX}{_host_tag()}_{pid}_{started}_{secrets.token_hex(2)}"


def database_of_ended_drill(name: str) -> bool:
    """A drill database made by a drill on this host that is no longer running. Databases
    of other hosts, and names without an owner, are never taken for one."""
    parts = name.removeprefix(DATABASE_PREFIX).split("_")
    if not name.startswith(DATABASE_PREFIX) or len(parts) != 4 or parts[0] != _host_tag():
        return False
    pid, started = parts[1], parts[2]
    if not (pid.isdigit() and started.isdigit()):
        return False
    return process_start(int(pid)) != started
