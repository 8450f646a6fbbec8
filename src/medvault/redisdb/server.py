"""A scratch `redis-server`: started in a private (0700) directory, reachable only through a
Unix socket there (no TCP port) and with a random password, saving nothing (`save ""`,
`appendonly no`), and loaded with an RDB by acting as its master (replication.RdbFeeder).

It holds patient data in memory only: on Linux it is started under `setpriv --pdeathsig
KILL`, so that it dies with the medvault process that started it even when that process is
killed."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator

from medvault.errors import IntegrityError, SourceUnavailable
from medvault.redisdb.replication import RdbFeeder
from medvault.redisdb.resp import Connection, RedisAddress, connect, info

SOCKET = "redis.sock"
LOG = "redis.log"
POLL_S = 0.02
START_WAIT_S = 30.0
CONNECT_WAIT_S = 60.0
SOCKET_PATH_MAX = 100


def find_redis_server() -> str:
    program = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if program is None:
        raise SourceUnavailable(
            "redis-server is not installed: a scratch server is needed (package redis-server)"
        )
    return program


class ScratchRedis:
    """One scratch server in `workdir` (which the caller made private and removes)."""

    def __init__(self, workdir: str, databases: int = 16) -> None:
        self.workdir = workdir
        self.password = secrets.token_hex(24)
        self.databases = max(16, databases)
        self.process: subprocess.Popen[bytes] | None = None
        # A Unix socket's path has at most 107 bytes: a deep scratch directory gets its
        # socket in a private directory of its own under /tmp.
        self.socket_dir: str | None = None
        folder = workdir
        if len(os.fsencode(os.path.join(workdir, SOCKET))) > SOCKET_PATH_MAX:
            folder = self.socket_dir = tempfile.mkdtemp(prefix="medvault-redis-", dir="/tmp")
        self.address = RedisAddress(None, 0, os.path.join(folder, SOCKET), 0, None)

    def _config(self, masterauth: str) -> bytes:
        lines = [
            "port 0",
            f'unixsocket "{self.address.path}"',
            "unixsocketperm 700",
            f'dir "{self.workdir}"',
            f'logfile "{os.path.join(self.workdir, LOG)}"',
            'save ""',
            "appendonly no",
            "daemonize no",
            f"databases {self.databases}",
            f"requirepass {self.password}",
            f"masterauth {masterauth}",
            "repl-diskless-load on-empty-db",
            "repl-timeout 3600",
            "replica-serve-stale-data yes",
            "protected-mode yes",
        ]
        return ("\n".join(lines) + "\n").encode()

    def start(self, masterauth: str) -> None:
        program = find_redis_server()
        wrapper = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        # The configuration (and so the passwords) goes through stdin, never argv.
        self.process = subprocess.Popen(
            [*wrapper, program, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        assert self.process.stdin is not None
        self.process.stdin.write(self._config(masterauth))
        self.process.stdin.close()
        deadline = time.monotonic() + START_WAIT_S
        while not os.path.exists(self.address.path or ""):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SourceUnavailable(f"the scratch redis-server did not start: {self.log()}")
            time.sleep(POLL_S)

    def connect(self, db: int = 0) -> Connection:
        address = RedisAddress(None, 0, self.address.path, db, None)
        return connect(address, self.password, what="the scratch Redis server", timeout=None)

    def log(self) -> str:
        """The last line of the server's log (no data in it: messages only)."""
        try:
            with open(os.path.join(self.workdir, LOG), encoding="utf-8", errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
        except OSError:
            return "no log"
        return lines[-1] if lines else "no log"

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()  # nothing to save: everything is in memory, and must go
            process.wait()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)  # a socket, nothing else


def load(server: ScratchRedis, chunks: Iterable[bytes], size: int) -> RdbFeeder:
    """Start `server` as a replica of a feeder sending it the RDB, and wait until it has
    loaded it (redis-server checks the RDB's CRC64 as it loads). The feeder keeps the link
    open until the caller closes it."""
    feeder = RdbFeeder(chunks, size)
    server.start(feeder.password)
    feeder.start()
    try:
        with server.connect() as conn:
            conn.call("REPLICAOF", "127.0.0.1", feeder.port)
            # A replica connects within a second or two (its replication cron); a load
            # itself takes as long as the RDB is large, and is watched through the link.
            deadline = time.monotonic() + CONNECT_WAIT_S
            while True:
                if not feeder.connected.is_set() and time.monotonic() > deadline:
                    raise IntegrityError(
                        f"the scratch redis-server did not ask for the RDB: {server.log()}"
                    )
                if feeder.error is not None:
                    raise feeder.error
                if server.process is not None and server.process.poll() is not None:
                    raise IntegrityError(f"the scratch redis-server stopped: {server.log()}")
                if feeder.sent.is_set():
                    state = info(conn, "replication")
                    loading = info(conn, "persistence").get("loading") == "1"
                    if state.get("master_link_status") == "up" and not loading:
                        return feeder
                if feeder.ended.is_set():
                    raise IntegrityError(
                        f"the scratch redis-server could not load the RDB: {server.log()}"
                    )
                time.sleep(POLL_S)
    except BaseException:
        feeder.close()
        raise


@contextlib.contextmanager
def loaded(
    workdir: str, chunks: Iterable[bytes], size: int, databases: int
) -> Iterator[ScratchRedis]:
    """A scratch server holding the RDB, stopped (and its data gone) on leaving."""
    server = ScratchRedis(workdir, databases)
    feeder = None
    try:
        feeder = load(server, chunks, size)
        yield server
    finally:
        server.stop()
        if feeder is not None:
            feeder.close()
