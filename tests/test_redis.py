"""Redis sources against real redis-server processes on free loopback ports: RDB snapshots
over the replication protocol, restores into running servers and to RDB files, drills."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.redisserver import RedisServer

from conftest import Cli
from medvault.redisdb.resp import Connection, keyspace

TTL_MS = 3_600_000
BINARY_KEY = b"bin\x00\xff\x80key"
BINARY_VALUE = bytes(range(256)) * 4


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    started: list[RedisServer] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[RedisServer], tmp_path: Path, *config: str, **kw: Any) -> RedisServer:
    server = RedisServer(tmp_path, *config, **kw)
    servers.append(server)
    return server


def fill(server: RedisServer) -> None:
    """Every type, binary names and values, TTLs, three databases with one left empty."""
    with server.client(0) as c:
        c.call("SET", "patient:1:session", "token-abc")
        c.call("SET", BINARY_KEY, BINARY_VALUE)
        c.call("SET", "expiring", "soon", "PX", TTL_MS)
        c.call("HSET", "patient:1", "name", "Ana Müller", "ward", "3B")
        c.call("RPUSH", "queue", "a", "b", "c")
        c.call("SADD", "tags", "x", "y", "z")
        c.call("ZADD", "scores", 1, "one", 2.5, "two")
        c.call("XADD", "events", "1-1", "kind", "login")
        c.call("XADD", "events", "2-1", "kind", "logout")
        c.call("PEXPIRE", "patient:1", TTL_MS)
        pipeline = [("SET", f"bulk:{i}", f"value-{i}" * 10) for i in range(2000)]
        c.pipeline(pipeline)  # type: ignore[arg-type]
    with server.client(2) as c:
        c.call("SET", "db2-only", "here")
        c.call("HSET", b"h\xfe", b"f\x00", b"v\x01")


def contents(server: RedisServer) -> dict[int, dict[bytes, tuple[Any, ...]]]:
    """Each database's keys with type, value and TTL (to the minute)."""
    found: dict[int, dict[bytes, tuple[Any, ...]]] = {}
    with server.client(0) as c:
        for db in keyspace(c):
            c.call("SELECT", db)
            found[db] = {key: _value(c, key) for key in _keys(c)}
    return found


def _keys(c: Connection) -> list[bytes]:
    keys = c.call("KEYS", "*")
    assert isinstance(keys, list)
    return [k for k in keys if isinstance(k, bytes)]


def _value(c: Connection, key: bytes) -> tuple[Any, ...]:
    kind = c.call("TYPE", key)
    reads = {
        b"string": ("GET", key),
        b"hash": ("HGETALL", key),
        b"list": ("LRANGE", key, 0, -1),
        b"set": ("SMEMBERS", key),
        b"zset": ("ZRANGE", key, 0, -1, "WITHSCORES"),
        b"stream": ("XRANGE", key, "-", "+"),
    }
    assert isinstance(kind, bytes)
    value = c.call(*reads[kind])
    if kind in (b"hash", b"set") and isinstance(value, list):
        value = sorted(value)  # type: ignore[type-var]
    ttl = c.call("PTTL", key)
    assert isinstance(ttl, int)
    return kind, repr(value), -1 if ttl < 0 else round(ttl / 60_000)


def configure(tmp_path: Path, server: RedisServer, **extra: str) -> None:
    lines = ["[source.sessions]", 'kind = "redis"', f'url = "{server.url}"']
    lines += [f'{key} = "{value}"' for key, value in extra.items()]
    (tmp_path / "medvault.toml").write_text("\n".join(lines) + "\n")


def backup(cli: Cli) -> dict[str, Any]:
    done = cli("backup", "sessions", "--json")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_backup_records_facts_and_restore_brings_back_every_type(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path)
    fill(source)
    configure(tmp_path, source)
    made = backup(initialized_cli)
    assert made["kind"] == "redis"
    assert made["server_version"] == "7.0.15" or made["server_version"].count(".") == 2
    assert made["keys_before"] == made["keys_after"] == {"0": 2008, "2": 2}
    assert len(made["rdb_crc64"]) == 16 and made["rdb_bytes"] == made["bytes_read"] > 0
    # Nothing of the RDB was written beside the repository.
    assert not list(tmp_path.rglob("*.rdb"))

    target = start(servers, tmp_path)
    done = initialized_cli("restore", made["snapshot"], "--redis-url", target.url, "--json")
    restored = json.loads(done.stdout)
    assert restored["keys"] == {"0": 2008, "2": 2}
    assert contents(target) == contents(source)
    with target.client(0) as c:
        assert c.call("GET", BINARY_KEY) == BINARY_VALUE
        ttl = c.call("PTTL", "expiring")
        assert isinstance(ttl, int) and TTL_MS - 600_000 < ttl <= TTL_MS
        assert c.call("PTTL", "queue") == -1


def test_a_master_that_sends_its_rdb_from_disk_is_read_by_its_length(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    """`repl-diskless-sync no`: the RDB comes as `$<len>`, not between EOF marks."""
    source = start(servers, tmp_path, "repl-diskless-sync no")
    fill(source)
    configure(tmp_path, source)
    made = backup(initialized_cli)
    assert made["keys_after"] == {"0": 2008, "2": 2} and len(made["rdb_crc64"]) == 16
    target = start(servers, tmp_path)
    initialized_cli("restore", made["snapshot"], "--redis-url", target.url)
    assert contents(target) == contents(source)


def test_restore_refuses_a_target_with_keys_unless_flush_or_replace(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path)
    fill(source)
    configure(tmp_path, source)
    snap = backup(initialized_cli)["snapshot"]
    target = start(servers, tmp_path)
    with target.client(0) as c:
        c.call("SET", "patient:1:session", "newer")
        c.call("SET", "unrelated", "kept?")

    refused = initialized_cli("restore", snap, "--redis-url", target.url, check=False)
    assert refused.returncode == 16
    assert "holds keys" in refused.stderr and refused.stderr.strip().count("\n") == 0
    with target.client(0) as c:
        assert c.call("GET", "patient:1:session") == b"newer"

    initialized_cli("restore", snap, "--redis-url", target.url, "--replace")
    with target.client(0) as c:
        assert c.call("GET", "patient:1:session") == b"token-abc"
        assert c.call("GET", "unrelated") == b"kept?"  # --replace touches the snapshot's keys

    initialized_cli("restore", snap, "--redis-url", target.url, "--flush")
    assert contents(target) == contents(source)  # --flush: nothing else is left


def test_rdb_file_loads_in_a_fresh_server_and_is_never_overwritten_unasked(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path)
    fill(source)
    configure(tmp_path, source)
    snap = backup(initialized_cli)["snapshot"]
    out = tmp_path / "restored" / "dump.rdb"
    out.parent.mkdir()
    initialized_cli("restore", snap, "--rdb-file", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    again = initialized_cli("restore", snap, "--rdb-file", str(out), check=False)
    assert again.returncode == 16 and "--force" in again.stderr
    initialized_cli("restore", snap, "--rdb-file", str(out), "--force")

    fresh = start(servers, tmp_path, f'dir "{out.parent}"', "dbfilename dump.rdb")
    assert contents(fresh) == contents(source)


def test_drill_loads_the_rdb_in_a_scratch_server_and_passes(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path)
    fill(source)
    configure(tmp_path, source)
    backup(initialized_cli)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = initialized_cli("drill", "sessions", "--scratch", str(scratch))
    assert "drill PASSED" in done.stdout
    assert "2 databases, 2010 keys, equal to the counts at backup" in done.stdout
    assert list(scratch.iterdir()) == []  # the scratch server and its directory are gone


def test_an_empty_server_backs_up_restores_and_drills(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path)
    configure(tmp_path, source)
    made = backup(initialized_cli)
    assert made["keys_before"] == {} and made["keys_after"] == {}
    target = start(servers, tmp_path)
    initialized_cli("restore", made["snapshot"], "--redis-url", target.url)
    assert contents(target) == {}
    assert "drill PASSED" in initialized_cli("drill", "sessions").stdout


class BurstProxy(threading.Thread):
    """Forwards connections to a Redis server; writes keys to it just before the first
    connection's SYNC goes through, and deletes them again when the next connection (the
    backup's second count) arrives: a burst of writes that the RDB caught and neither count
    saw, at exactly that moment."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections == 2:
                with self.server.client(0) as c:
                    c.call("DEL", "burst:1", "burst:2")
            upstream = socket.create_connection(("127.0.0.1", self.server.port))
            first = self.connections == 1
            threading.Thread(target=self._pipe, args=(client, upstream, first), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, dest: socket.socket, watch: bool) -> None:
        try:
            while data := source.recv(65536):
                if watch and b"SYNC\r\n" in data:
                    with self.server.client(0) as c:
                        c.call("SET", "burst:1", "x")
                        c.call("SET", "burst:2", "y")
                    watch = False
                dest.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dest.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def test_drill_fails_when_the_recorded_counts_disagree_with_the_rdb(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    """The counts taken before and after the RDB agree, the RDB holds two keys more: the
    drill must not take the counts' word for it."""
    source = start(servers, tmp_path)
    fill(source)
    proxy = BurstProxy(source)
    proxy.start()
    try:
        (tmp_path / "medvault.toml").write_text(
            f'[source.sessions]\nkind = "redis"\nurl = "redis://127.0.0.1:{proxy.port}/0"\n'
        )
        made = backup(initialized_cli)
    finally:
        proxy.close()
    assert made["keys_before"] == made["keys_after"] == {"0": 2008, "2": 2}

    done = initialized_cli("drill", "sessions", check=False)
    assert done.returncode == 23
    assert "drill FAILED" in done.stdout
    assert "db0: 2010 keys, the snapshot says 2008" in done.stdout
    assert "failed" in done.stderr and done.stderr.strip().count("\n") == 0


def test_a_server_with_a_password_and_an_acl_user(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    secret = "s3cret-pass"
    source = start(
        servers,
        tmp_path,
        f"user medvault on >{secret}-acl ~* &* +@read +info +sync +psync +replconf +ping +select",
        "user readonly on >nosync ~* +@read +info +ping +select",
        password=secret,
    )
    fill(source)
    password_file = tmp_path / "redis.pass"
    password_file.write_text(secret + "\n")
    configure(tmp_path, source, password_file=str(password_file))
    made = backup(initialized_cli)
    assert made["keys_after"] == {"0": 2008, "2": 2}

    acl_file = tmp_path / "acl.pass"
    acl_file.write_text(f"{secret}-acl")
    configure(tmp_path, source, password_file=str(acl_file), username="medvault")
    assert backup(initialized_cli)["keys_after"] == {"0": 2008, "2": 2}

    # A target with a password: --redis-password-file.
    target = start(servers, tmp_path, password="target-pw")
    target_file = tmp_path / "target.pass"
    target_file.write_text("target-pw")
    initialized_cli(
        "restore",
        made["snapshot"],
        "--redis-url",
        target.url,
        "--redis-password-file",
        str(target_file),
    )
    assert contents(target) == contents(source)

    no_sync = tmp_path / "nosync.pass"
    no_sync.write_text("nosync")
    configure(tmp_path, source, password_file=str(no_sync), username="readonly")
    refused = initialized_cli("backup", "sessions", check=False)
    assert refused.returncode == 15
    assert "refused replication" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "nosync" not in refused.stderr


def test_bad_input_is_one_line(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path, password="right")
    config = tmp_path / "medvault.toml"

    config.write_text(
        f'[source.sessions]\nkind = "redis"\nurl = "redis://:right@127.0.0.1:{source.port}/0"\n'
    )
    done = initialized_cli("backup", "sessions", check=False)
    assert done.returncode == 2 and "holds a password" in done.stderr
    assert "right" not in done.stderr and done.stderr.strip().count("\n") == 0

    wrong = tmp_path / "wrong.pass"
    wrong.write_text("wrong")
    configure(tmp_path, source, password_file=str(wrong))
    done = initialized_cli("backup", "sessions", check=False)
    assert done.returncode == 15 and "refused the connection" in done.stderr
    assert "wrong" not in done.stderr.replace("WRONGPASS", "")
    assert done.stderr.strip().count("\n") == 0

    source.stop()
    done = initialized_cli("backup", "sessions", check=False)
    assert done.returncode == 15 and "cannot connect" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert initialized_cli.objects("snapshots") == []

    gone = initialized_cli(
        "restore", "latest", "--redis-url", f"redis://:pw@127.0.0.1:{source.port}", check=False
    )
    assert gone.returncode != 0 and gone.stderr.strip().count("\n") == 0
    assert os.path.exists(tmp_path / "medvault.toml")


def test_a_redis_schedule_takes_full_backups_only(tmp_path: Path) -> None:
    from medvault.config import load_settings
    from medvault.errors import ConfigError

    config = tmp_path / "medvault.toml"
    base = '[repository.main]\nurl = "/r"\n[source.sessions]\nkind = "redis"\n'
    config.write_text(
        base + 'url = "redis://127.0.0.1/0"\n[source.sessions.schedule]\nfull = "every 1h"\n'
    )
    assert load_settings(str(config)).source["sessions"].kind == "redis"
    config.write_text(
        base + 'url = "redis://127.0.0.1/0"\n[source.sessions.schedule]\nincremental = "every 1h"\n'
    )
    with pytest.raises(ConfigError, match="always a whole RDB"):
        load_settings(str(config))
    config.write_text(base + 'url = "redis://u:secret@127.0.0.1/0"\n')
    with pytest.raises(ConfigError, match=r"source\.sessions\.url: holds a password") as caught:
        load_settings(str(config))
    assert "secret" not in str(caught.value)


def test_a_scheduled_full_backup_of_a_redis_source_runs_as_a_job(
    servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path)
    fill(source)
    (tmp_path / "medvault.toml").write_text(
        f'[repository.main]\nurl = "{tmp_path / "repo"}"\n'
        f'[source.sessions]\nkind = "redis"\nurl = "{source.url}"\n'
        '[source.sessions.schedule]\nfull = "every 1h"\n'
    )
    cli = Cli("", tmp_path, location=tmp_path / "repo")
    cli.env["MEDVAULT_REPOSITORY"] = ""
    cli("init")
    job = ["-m", "medvault.cli.jobrun", "--config", "medvault.toml", "--job", "sessions/full"]
    done = subprocess.run(
        [sys.executable, *job],
        cwd=tmp_path,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "job sessions/full: ok: snapshot" in done.stdout and "(redis, full)" in done.stdout
    (snap,) = json.loads(cli("snapshots", "--json").stdout)
    assert snap["source"] == "sessions" and snap["kind"] == "redis"


def test_the_scratch_server_loads_the_rdb_from_the_socket_and_writes_no_file(
    servers: list[RedisServer], tmp_path: Path
) -> None:
    from medvault.redisdb.replication import RdbReader
    from medvault.redisdb.server import loaded

    source = start(servers, tmp_path)
    fill(source)
    with source.client(0) as conn:
        reader = RdbReader(conn)
        reader.start()
        buffer = bytearray(1 << 20)
        rdb = b""
        while got := reader.readinto(memoryview(buffer)):
            rdb += bytes(buffer[:got])
    version, crc = reader.facts()
    assert rdb.startswith(b"REDIS") and rdb[-8:].hex() == crc and version >= 9
    workdir = tmp_path / "w"
    workdir.mkdir(mode=0o700)
    chunks = [rdb[i : i + 4096] for i in range(0, len(rdb), 4096)]
    with loaded(str(workdir), chunks, len(rdb), 16) as scratch:
        with scratch.connect() as conn:
            assert keyspace(conn) == {0: 2008, 2: 2}
        log = (workdir / "redis.log").read_text()
        assert f"receiving {len(rdb)} bytes from master to parser" in log
        assert sorted(os.listdir(workdir)) == ["redis.log", "redis.sock"]
    assert scratch.process is not None and scratch.process.poll() is not None


class CutProxy(threading.Thread):
    """Forwards one connection and cuts it after `limit` bytes from the server."""

    def __init__(self, server: RedisServer, limit: int) -> None:
        super().__init__(daemon=True)
        self.server, self.limit = server, limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    def run(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.server.port))
        threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
        sent = 0
        with contextlib.suppress(OSError):
            while sent < self.limit and (data := upstream.recv(65536)):
                client.sendall(data[: self.limit - sent])
                sent += len(data)
        for end in (client, upstream):  # shutdown: a recv in the other thread holds the fd
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    @staticmethod
    def _forward(source: socket.socket, dest: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                dest.sendall(data)


def test_an_rdb_cut_short_saves_no_snapshot(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path)
    fill(source)
    proxy = CutProxy(source, 20_000)
    proxy.start()
    (tmp_path / "medvault.toml").write_text(
        f'[source.sessions]\nkind = "redis"\nurl = "redis://127.0.0.1:{proxy.port}/0"\n'
    )
    done = initialized_cli("backup", "sessions", check=False)
    assert done.returncode == 15, done.stderr
    assert "before the whole RDB was sent" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert initialized_cli.objects("snapshots") == []


def test_a_failing_before_hook_fails_the_redis_backup_and_saves_nothing(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path)
    hook = tmp_path / "stop-app"
    hook.write_text("#!/bin/sh\necho 'the application would not stop' >&2\nexit 3\n")
    hook.chmod(0o755)
    configure(tmp_path, source)
    with (tmp_path / "medvault.toml").open("a") as config:
        config.write(f'[source.sessions.hooks]\nbefore = ["{hook}"]\n')
    done = initialized_cli("backup", "sessions", check=False)
    assert done.returncode == 30 and done.stderr.strip().count("\n") == 0
    assert initialized_cli.objects("snapshots") == []


def test_a_failing_after_restore_hook_makes_the_restore_incomplete_and_keeps_the_keys(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path)
    fill(source)
    configure(tmp_path, source)
    snap = backup(initialized_cli)["snapshot"]
    hook = tmp_path / "start-app"
    hook.write_text("#!/bin/sh\necho 'the application would not start' >&2\nexit 1\n")
    hook.chmod(0o755)
    with (tmp_path / "medvault.toml").open("a") as config:
        config.write(f'[source.sessions.hooks]\nafter_restore = ["{hook}"]\n')
    target = start(servers, tmp_path)
    done = initialized_cli("restore", snap, "--redis-url", target.url, check=False)
    assert done.returncode == 3, done.stderr
    assert contents(target) == contents(source)


def test_a_dry_run_counts_the_rdb_and_writes_nothing(
    initialized_cli: Cli, servers: list[RedisServer], tmp_path: Path
) -> None:
    source = start(servers, tmp_path)
    fill(source)
    # An RDB of several chunks, of which only the first (the header holds times) changes;
    # a chunk is at most 8 MiB, so at most a third of this one is new the second time.
    with source.client(0) as c:
        c.call("SET", "scan:ct-0001", os.urandom(24_000_000))
    configure(tmp_path, source)
    before = {folder: initialized_cli.objects(folder) for folder in ("data", "index", "snapshots")}
    dry = json.loads(initialized_cli("backup", "sessions", "--dry-run", "--json").stdout)
    assert dry["kind"] == "redis" and dry["bytes_read"] > 0 and dry["bytes_added"] > 0
    after = {folder: initialized_cli.objects(folder) for folder in ("data", "index", "snapshots")}
    assert after == before
    real = backup(initialized_cli)
    assert real["bytes_read"] == dry["bytes_read"]  # the same RDB: nothing changed between
    again = json.loads(initialized_cli("backup", "sessions", "--dry-run", "--json").stdout)
    assert again["bytes_new"] < dry["bytes_new"] / 2  # the repository holds the rest now
    text = initialized_cli("backup", "sessions", "--dry-run").stdout
    assert "dry run of a Redis backup of sessions" in text and "nothing was written" in text
