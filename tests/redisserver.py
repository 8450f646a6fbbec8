"""Real redis-server processes for tests: each on a free loopback port, in its own directory
under the test's tmp_path, saving nothing, killed at the end of the test."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.pgcluster import free_port

from medvault.redisdb.resp import Connection, RedisAddress, connect

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, base: Path, *config: str, password: str | None = None) -> None:
        self.port = free_port()
        self.dir = base / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.password = password
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f'dir "{self.dir}"',
            'save ""',
            "appendonly no",
            f'logfile "{self.dir / "redis.log"}"',
            # A diskless master waits 5 s for more replicas by default: not in tests.
            "repl-diskless-sync-delay 0",
            *config,
        ]
        if password is not None:
            lines.append(f"requirepass {password}")
        (self.dir / "redis.conf").write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([REDIS_SERVER, str(self.dir / "redis.conf")])
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError((self.dir / "redis.log").read_text()) from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(
        self, db: int = 0, user: str | None = None, password: str | None = None
    ) -> Connection:
        address = RedisAddress("127.0.0.1", self.port, None, db, user)
        return connect(address, password or self.password, timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
