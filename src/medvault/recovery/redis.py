"""Restoring a Redis snapshot (an RDB) without writing it to a disk.

Into a running server: a scratch redis-server (redisdb/server.py) loads the RDB over the
replication protocol; each key is then read there with DUMP and PTTL and written to the
target with RESTORE, database by database, in pipelined batches. A target holding keys is
refused unless `flush` (FLUSHALL first) or `replace` (RESTORE ... REPLACE per key) is asked.
TTLs are kept as they were at backup: the scratch holds absolute expiry times and PTTL
counts down from them, so a key that has expired since is not restored.

For a stopped server: the RDB written to a file (0600, never over an existing file unless
asked), which redis-server loads at start (`dbfilename`/`dir`).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medvault.errors import RedisReplyError, RestoreTargetError, SourceUnavailable, TargetFull
from medvault.recovery.stream import iter_stream, stream_node
from medvault.redisdb.facts import RedisFacts
from medvault.redisdb.resp import Connection, RedisAddress, connect, keyspace
from medvault.redisdb.server import ScratchRedis, loaded

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository

BATCH = 500


@dataclass
class RedisRestoreResult:
    keys: dict[int, int] = field(default_factory=dict)  # restored per database
    expired: int = 0  # keys whose TTL ran out since the backup: not restored
    bytes_read: int = 0
    duration: float = 0.0


def load_scratch(
    repo: Repository, snapshot: Snapshot, workdir: str
) -> AbstractContextManager[ScratchRedis]:
    """A context manager: a scratch server in `workdir` holding the snapshot's RDB."""
    facts = RedisFacts.of(snapshot)
    node = stream_node(repo, snapshot)
    databases = max(facts.databases, default=0) + 1
    return loaded(workdir, iter_stream(repo, snapshot), node.size, databases)


def _private_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="medvault-redis-")  # mkdtemp: 0700


def restore_to_server(
    repo: Repository,
    snapshot: Snapshot,
    *,
    target: RedisAddress,
    password: str | None,
    flush: bool = False,
    replace: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> RedisRestoreResult:
    started = time.monotonic()
    result = RedisRestoreResult()
    with connect(target, password, what="the target Redis server", select=False) as dest:
        held = keyspace(dest)
        if held and not (flush or replace):
            where = ", ".join(f"db{db}: {n}" for db, n in sorted(held.items()))
            raise RestoreTargetError(
                f"the target Redis server {dest.describe} holds keys ({where}); restore with "
                "--flush (remove everything first) or --replace (overwrite keys of the "
                "same name)"
            )
        with _private_dir() as workdir, load_scratch(repo, snapshot, workdir) as scratch:
            result.bytes_read = stream_node(repo, snapshot).size
            if on_progress is not None:
                on_progress(result.bytes_read)
            if flush:
                dest.call("FLUSHALL")
            with scratch.connect() as source:
                for db in sorted(keyspace(source)):
                    copied, expired = _copy_db(source, dest, db, replace=flush or replace)
                    result.keys[db] = copied
                    result.expired += expired
    result.duration = time.monotonic() - started
    return result


def _copy_db(source: Connection, dest: Connection, db: int, *, replace: bool) -> tuple[int, int]:
    source.call("SELECT", db)
    try:
        dest.call("SELECT", db)
    except RedisReplyError as exc:
        raise RestoreTargetError(
            f"the target Redis server {dest.describe} has no database {db}: {exc}"
        ) from None
    copied = expired = 0
    cursor = b"0"
    while True:
        reply = source.call("SCAN", cursor, "COUNT", BATCH)
        assert isinstance(reply, list) and len(reply) == 2
        cursor = reply[0] if isinstance(reply[0], bytes) else b"0"
        keys = [k for k in reply[1] if isinstance(k, bytes)] if isinstance(reply[1], list) else []
        if keys:
            dumped = source.pipeline([(cmd, key) for key in keys for cmd in ("PTTL", "DUMP")])
            commands: list[tuple[bytes | str | int, ...]] = []
            for key, ttl, payload in zip(keys, dumped[::2], dumped[1::2], strict=True):
                if not isinstance(ttl, int) or ttl == -2 or not isinstance(payload, bytes):
                    expired += 1  # gone (expired) between SCAN and DUMP
                    continue
                extra = ("REPLACE",) if replace else ()
                commands.append(("RESTORE", key, max(ttl, 0), payload, *extra))
            for reply_ in dest.pipeline(commands):
                if isinstance(reply_, RedisReplyError):
                    if str(reply_).startswith("BUSYKEY"):
                        raise RestoreTargetError(
                            f"the target Redis server {dest.describe}: a key of the snapshot "
                            "exists there already; restore with --replace or --flush"
                        )
                    raise RestoreTargetError(
                        f"the target Redis server {dest.describe} refused RESTORE: {reply_}"
                    )
            copied += len(commands)
        if cursor == b"0":
            return copied, expired


def restore_to_file(
    repo: Repository,
    snapshot: Snapshot,
    path: str,
    *,
    force: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write the RDB to `path` (mode 0600); an existing file only with `force` (replaced
    whole, by a rename once the new one is complete)."""
    RedisFacts.of(snapshot)
    if os.path.lexists(path) and not force:
        raise RestoreTargetError(f"{path} exists; give --force to replace it")
    if os.path.isdir(path):
        raise RestoreTargetError(f"{path} is a directory; name the RDB file to write")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, partial = tempfile.mkstemp(prefix=".medvault-rdb-", dir=folder)  # 0600
    except OSError as exc:
        raise RestoreTargetError(f"cannot write in {folder}: {exc.strerror}") from None
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for data in iter_stream(repo, snapshot):
                out.write(data)
                written += len(data)
                if on_progress is not None:
                    on_progress(len(data))
            out.flush()
            os.fsync(out.fileno())
        if force:
            os.replace(partial, path)
        else:
            os.link(partial, path)  # fails, rather than overwrite, if it appeared meanwhile
            os.unlink(partial)
    except FileExistsError:
        os.unlink(partial)
        raise RestoreTargetError(f"{path} exists; give --force to replace it") from None
    except OSError as exc:
        if os.path.exists(partial):
            os.unlink(partial)
        raise TargetFull(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    return written


def scratch_keyspace(scratch: ScratchRedis) -> dict[int, int]:
    with scratch.connect() as conn:
        try:
            return keyspace(conn)
        except RedisReplyError as exc:
            raise SourceUnavailable(f"the scratch Redis server: {exc}") from None
