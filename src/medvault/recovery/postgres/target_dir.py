"""Where a restore goes: the port a started server will listen on, and the data directory
(empty; or, for --delta, a stopped copy of the same cluster; or emptied with --force)."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING

from medvault.errors import RestoreTargetError, UsageError
from medvault.postgres.datadir import read_system_identifier, running_postmaster
from medvault.postgres.facts import PhysicalFacts

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot


def entries(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise RestoreTargetError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise RestoreTargetError(f"cannot read {path}: {exc.strerror}") from None


def check_port_free(port: int) -> None:
    """Refuse a port something listens on (checked before anything is restored)."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port")
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        with sock:
            # As PostgreSQL does: TIME_WAIT leftovers do not count, a listener does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                if family == socket.AF_INET6:
                    continue
                raise RestoreTargetError(
                    f"port {port} is in use; choose a free one with --port"
                ) from None
            if family == socket.AF_INET6:
                return
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        raise RestoreTargetError(f"port {port} is in use; choose a free one with --port")


def check_data_directory(pgdata: str, snapshot: Snapshot, *, delta: bool, force: bool) -> None:
    """Refuse a non-empty directory unless --delta (same cluster, stopped) or --force
    (stopped); never touch a running server's directory."""
    if not entries(pgdata):
        return
    pid = running_postmaster(pgdata)
    if pid is not None:
        raise RestoreTargetError(
            f"{pgdata} belongs to a running PostgreSQL server (pid {pid}); stop it first, "
            "or restore into another directory"
        )
    if force:
        return
    if not delta:
        raise RestoreTargetError(
            f"{pgdata} is not empty; restore into an empty directory, or pass --delta to "
            "rewrite only what differs (same cluster) or --force to empty it first"
        )
    found = read_system_identifier(pgdata)
    wanted = PhysicalFacts.of(snapshot).system_identifier
    if found is None and not os.path.exists(os.path.join(pgdata, "PG_VERSION")):
        raise RestoreTargetError(
            f"{pgdata} does not look like a PostgreSQL data directory, so --delta cannot reuse "
            "it; pass --force to empty it, or choose another directory"
        )
    if found is not None and found != wanted:
        raise RestoreTargetError(
            f"{pgdata} holds another cluster (system identifier {found}, the backup is of "
            f"{wanted}); --delta only reuses a copy of the same cluster: pass --force to "
            "empty it, or choose another directory"
        )


def empty_directory(path: str) -> None:
    from medvault.dirpath import remove_tree

    names = entries(path)
    if not names:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreTargetError(f"cannot read {path}: {exc.strerror}") from None
    try:
        for name in names:
            # Through directory descriptors: a tree of any depth (shutil.rmtree recurses).
            problems = remove_tree(fd, os.fsencode(name), os.fsencode(path))
            if problems:
                raise RestoreTargetError(f"cannot remove {problems[0]}")
    finally:
        os.close(fd)
