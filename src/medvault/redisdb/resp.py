"""A small RESP2 client over a plain socket: commands, pipelined batches, and the raw socket
for the replication stream (which no client library hands out).

The server is named by a URL without a password, `redis://[user@]host[:port][/db]`, or a
Unix socket `unix:///path/to/socket[?db=N]`; the password is handed in separately (from
`password_file`), so it never sits in medvault.toml, argv or a log line."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

from medvault.errors import RedisReplyError, SourceUnavailable, UsageError

DEFAULT_PORT = 6379
CONNECT_TIMEOUT_S = 10.0
READ_SIZE = 256 * 1024

Reply: TypeAlias = "bytes | int | list[Reply] | RedisReplyError | None"


@dataclass(frozen=True)
class RedisAddress:
    host: str | None  # None: a Unix socket
    port: int
    path: str | None  # the Unix socket
    db: int
    username: str | None

    def describe(self) -> str:
        where = self.path if self.path is not None else f"{self.host}:{self.port}"
        user = f"{self.username}@" if self.username else ""
        return f"redis://{user}{where}/{self.db}" if self.path is None else f"{user}{where}"


def parse_url(url: str, what: str = "url") -> RedisAddress:
    """A Redis URL without a password; a password in it is refused (UsageError)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{what}: not a Redis URL ({exc})") from None
    if parts.scheme not in ("redis", "unix"):
        raise UsageError(f"{what}: must start with redis:// or unix:// (TLS is not supported)")
    if parts.password is not None or "password" in parts.query.lower():
        raise UsageError(
            f"{what}: holds a password; remove it and keep the password in password_file"
        )
    username = unquote(parts.username) if parts.username else None
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        if not parts.path:
            raise UsageError(f"{what}: unix:// needs the socket's path")
        db_text = query.get("db", ["0"])[0]
        return RedisAddress(None, 0, parts.path, _db(db_text, what), username)
    if not parts.hostname:
        raise UsageError(f"{what}: names no host (redis://HOST:PORT/DB)")
    db_text = parts.path.strip("/") or query.get("db", ["0"])[0]
    return RedisAddress(parts.hostname, port or DEFAULT_PORT, None, _db(db_text, what), username)


def _db(text: str, what: str) -> int:
    if not text.isdigit():
        raise UsageError(f"{what}: the database must be a number, not {text!r}")
    return int(text)


def encode(args: tuple[bytes | str | int, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


class Connection:
    """One connection; replies are read from a buffer that the replication reader shares."""

    def __init__(self, sock: socket.socket, describe: str) -> None:
        self.sock = sock
        self.describe = describe
        self.buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands ------------------------------------------------------------------------

    def send(self, *args: bytes | str | int) -> None:
        self.sock.sendall(encode(args))

    def call(self, *args: bytes | str | int) -> Reply:
        """One command's reply; an error reply raises RedisReplyError."""
        self.send(*args)
        reply = self.read_reply()
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def pipeline(self, commands: list[tuple[bytes | str | int, ...]]) -> list[Reply]:
        """Send a batch at once, then read every reply (errors returned, not raised)."""
        self.sock.sendall(b"".join(encode(args) for args in commands))
        return [self.read_reply() for _ in commands]

    # -- reading -------------------------------------------------------------------------

    def _fill(self) -> None:
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def read_line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            self._fill()

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_reply(self) -> Reply:
        line = self.read_line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RedisReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.read_exact(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [self.read_reply() for _ in range(count)]
        raise ConnectionError(f"unexpected reply from the server: {line[:40]!r}")


def connect(
    address: RedisAddress,
    password: str | None,
    *,
    what: str = "Redis server",
    timeout: float | None = CONNECT_TIMEOUT_S,
    select: bool = True,
) -> Connection:
    """A connection, authenticated (AUTH [user] password) and on the URL's database.
    Unreachable, refused or wrong credentials: SourceUnavailable in one line."""
    where = address.describe()
    try:
        if address.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(address.path)
        else:
            assert address.host is not None
            sock = socket.create_connection((address.host, address.port), CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
    except OSError as exc:
        raise SourceUnavailable(
            f"cannot connect to {what} {where}: {exc.strerror or exc}"
        ) from None
    conn = Connection(sock, where)
    try:
        if password is not None:
            auth: tuple[str, ...] = (
                ("AUTH", address.username, password) if address.username else ("AUTH", password)
            )
            conn.call(*auth)
        elif address.username:
            raise SourceUnavailable(
                f"{what} {where}: a user is named but no password_file is given"
            )
        conn.call("PING")
        if select and address.db:
            conn.call("SELECT", address.db)
    except RedisReplyError as exc:
        conn.close()
        raise SourceUnavailable(f"{what} {where} refused the connection: {exc}") from None
    except (OSError, ConnectionError) as exc:
        conn.close()
        raise SourceUnavailable(f"{what} {where}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def info(conn: Connection, section: str) -> dict[str, str]:
    """INFO SECTION as a mapping of its `key:value` lines."""
    reply = conn.call("INFO", section)
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            found[key.strip()] = value.strip()
    return found


def keyspace(conn: Connection) -> dict[int, int]:
    """Keys per database that holds any (INFO keyspace: `db0:keys=3,expires=1,...`)."""
    counts: dict[int, int] = {}
    for key, value in info(conn, "keyspace").items():
        if key.startswith("db") and key[2:].isdigit():
            fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
            counts[int(key[2:])] = int(fields.get("keys", "0"))
    return counts
