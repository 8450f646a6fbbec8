"""The RDB snapshot over the replication protocol, both ways.

Taking one (`RdbReader`), as `redis-cli --rdb` does: `REPLCONF capa eof`, `REPLCONF rdb-only
1`, `SYNC`; the master answers with newlines while it forks, then `$<len>\r\n` and the RDB, or
(diskless) `$EOF:<40 bytes>\r\n`, the RDB and those 40 bytes again. The reader hands out the
RDB's bytes only, and keeps its header and last bytes: an RDB of version 5 or later ends with
the EOF opcode (0xFF) and a CRC64 of everything before it, which the snapshot records.

Giving one (`RdbFeeder`) to a scratch `redis-server` started as a replica: a listener on a
loopback port that answers the replica's handshake (PING, AUTH, REPLCONF, PSYNC) with
`+FULLRESYNC <replid> 0` and `$<len>\r\n<rdb>`. The replica loads it from the socket
(`repl-diskless-load on-empty-db`), so the RDB never touches a disk. The replica must AUTH
with a random password first: another local user connecting to the port gets nothing.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import socket
import threading
from collections.abc import Iterable

from medvault.errors import IntegrityError, RedisReplyError, SourceUnavailable
from medvault.redisdb.resp import Connection, encode

MARK_SIZE = 40
RDB_MAGIC = b"REDIS"
READ_SIZE = 1024 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
SYNC_TIMEOUT_S = 300.0  # between two reads: the master sends newlines while it forks


class RdbReader:
    """The RDB a master sends after SYNC, as a stream the backup pipeline reads into."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.size = 0
        self.header = b""
        self.tail = b""
        self._remaining: int | None = None  # $<len>: bytes still to come
        self._mark: bytes | None = None  # $EOF:<mark>
        self._pending = bytearray()  # EOF form: read but possibly the mark
        self._done = False
        self._out = bytearray()  # read, not yet handed out

    def start(self) -> None:
        """Ask for the RDB and read the master's announcement of it."""
        conn = self.conn
        for args in (("REPLCONF", "capa", "eof"), ("REPLCONF", "rdb-only", "1")):
            # An older server lacks rdb-only: SYNC itself says whether we may sync.
            with contextlib.suppress(RedisReplyError):
                conn.call(*args)
        conn.sock.settimeout(SYNC_TIMEOUT_S)
        conn.send("SYNC")
        while True:
            line = conn.read_line().lstrip(b"\n")
            if line:
                break
        if line.startswith(b"-"):
            reason = line[1:].decode("utf-8", "replace")
            raise SourceUnavailable(
                f"Redis server {conn.describe} refused replication (SYNC): {reason}; the "
                "user needs the sync, psync and replconf commands"
            )
        if not line.startswith(b"$"):
            raise SourceUnavailable(
                f"Redis server {conn.describe} answered SYNC with {line[:40]!r}, not an RDB"
            )
        if line.startswith(b"$EOF:"):
            self._mark = line[5:]
            if len(self._mark) != MARK_SIZE:
                raise SourceUnavailable(f"Redis server {conn.describe}: malformed EOF mark")
        else:
            self._remaining = int(line[1:])

    def _take(self, data: bytes) -> bytes:
        if len(self.header) < 9:
            self.header = (self.header + data)[:9]  # "REDIS" and four digits
        self.size += len(data)
        self.tail = (self.tail + data[-9:])[-9:]
        return data

    def _next(self) -> bytes:
        """The next piece of the RDB (b"" is no end: see _done)."""
        conn = self.conn
        if self._remaining is not None:
            if not conn.buffer and self._remaining:
                conn.buffer += self._recv()
            piece = bytes(conn.buffer[: self._remaining])
            del conn.buffer[: len(piece)]
            self._remaining -= len(piece)
            self._done = self._remaining == 0
            return self._take(piece)
        assert self._mark is not None
        if conn.buffer:
            self._pending += conn.buffer
            conn.buffer.clear()
        else:
            self._pending += self._recv()
        at = self._pending.find(self._mark, max(0, len(self._pending) - READ_SIZE - MARK_SIZE))
        if at >= 0:
            piece = bytes(self._pending[:at])
            self._pending.clear()
            self._done = True
            return self._take(piece)
        keep = len(self._pending) - MARK_SIZE
        piece = bytes(self._pending[:keep]) if keep > 0 else b""
        del self._pending[: max(keep, 0)]
        return self._take(piece)

    def _recv(self) -> bytes:
        data = self.conn.sock.recv(READ_SIZE)
        if not data:
            raise SourceUnavailable(
                f"Redis server {self.conn.describe} closed the connection before the whole "
                "RDB was sent"
            )
        return data

    def readinto(self, buffer: memoryview, /) -> int:
        # Fill the whole buffer: a short read makes the stream pipeline nap (FillingReader),
        # and a socket hands out what has arrived, often far less than asked.
        while len(self._out) < len(buffer) and not self._done:
            self._out += self._next()
        size = min(len(buffer), len(self._out))
        buffer[:size] = self._out[:size]
        del self._out[:size]
        return size

    def facts(self) -> tuple[int, str | None]:
        """The RDB's version and CRC64 (hex), checked for the framing an RDB must have."""
        if not self._done:
            raise SourceUnavailable("the RDB transfer ended early")
        if not self.header.startswith(RDB_MAGIC) or not self.header[5:9].isdigit():
            raise SourceUnavailable(
                f"Redis server {self.conn.describe} sent something that is not an RDB"
            )
        version = int(self.header[5:9])
        checksum = None
        if version >= 5:
            if len(self.tail) < 9 or self.tail[0] != 0xFF:
                raise SourceUnavailable("the RDB does not end with its EOF opcode: cut short?")
            checksum = self.tail[1:].hex()
        return version, checksum


def check_rdb_start(data: bytes) -> None:
    if not data.startswith(RDB_MAGIC):
        raise IntegrityError("the stored stream is not an RDB file")


class RdbFeeder(threading.Thread):
    """Acts as a master for one replica: sends it the RDB, then keeps the link open (a
    replica that lost its master would try to sync again) until `close()`."""

    def __init__(self, chunks: Iterable[bytes], size: int) -> None:
        super().__init__(name="medvault-rdb-feeder", daemon=True)
        self.chunks = chunks
        self.size = size
        self.password = secrets.token_hex(24)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.connected = threading.Event()  # our replica asked for the RDB
        self.sent = threading.Event()  # the whole RDB went out
        self.ended = threading.Event()  # the replica's connection is over
        self.error: BaseException | None = None
        self._closing = threading.Event()

    def run(self) -> None:
        try:
            while not self._closing.is_set():
                try:
                    conn_sock, _ = self.listener.accept()
                except OSError:
                    return  # closed
                conn_sock.settimeout(HANDSHAKE_TIMEOUT_S)  # a silent peer must not block us
                conn = Connection(conn_sock, "the scratch replica")
                try:
                    if self._serve(conn):
                        self.listener.close()  # one replica only
                        self._hold(conn)
                        return
                finally:
                    conn.close()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended.set()

    def _serve(self, conn: Connection) -> bool:
        """The handshake; False when the peer is not our replica (no or a wrong AUTH)."""
        authenticated = False
        while True:
            try:
                request = conn.read_reply()
            except (OSError, ConnectionError):
                return False
            if not isinstance(request, list) or not request:
                return False
            command = bytes(request[0]).upper() if isinstance(request[0], bytes) else b""
            if command == b"AUTH":
                given = request[-1] if isinstance(request[-1], bytes) else b""
                if not hmac.compare_digest(given, self.password.encode()):
                    conn.sock.sendall(b"-WRONGPASS invalid password\r\n")
                    return False
                authenticated = True
                conn.sock.sendall(b"+OK\r\n")
            elif command == b"PING":
                conn.sock.sendall(b"+PONG\r\n" if authenticated else b"-NOAUTH needed\r\n")
            elif not authenticated:
                conn.sock.sendall(b"-NOAUTH Authentication required.\r\n")
                return False
            elif command == b"REPLCONF":
                conn.sock.sendall(b"+OK\r\n")
            elif command in (b"PSYNC", b"SYNC"):
                self.connected.set()
                conn.sock.settimeout(None)
                replid = secrets.token_hex(20)
                conn.sock.sendall(b"+FULLRESYNC %s 0\r\n$%d\r\n" % (replid.encode(), self.size))
                for chunk in self.chunks:
                    conn.sock.sendall(chunk)
                self.sent.set()
                return True
            else:
                conn.sock.sendall(b"-ERR unknown command\r\n")

    def _hold(self, conn: Connection) -> None:
        conn.sock.settimeout(0.2)
        while not self._closing.is_set():
            try:
                if not conn.sock.recv(4096):
                    return  # the replica went away (a failed load closes the link)
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        if self.is_alive():
            self.join()


__all__ = ["RdbFeeder", "RdbReader", "check_rdb_start", "encode"]
