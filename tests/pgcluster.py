"""Throwaway PostgreSQL clusters for tests: initdb under a temp dir on a free port, run as the
`postgres` OS user (PostgreSQL refuses root), always stopped by the fixture that made them.

A `PgWorld` bundles what a PostgreSQL test needs: a directory owned by postgres, a medvault
repository opened with a key file (so the archive_command starts fast), a medvault.toml naming
the source `emr`, and a `Cli` that runs medvault as the postgres user, as a DBA would.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

MEDVAULT = str(Path(sys.executable).parent / "medvault")
PG_USER = "postgres"


def pg_bindir() -> Path:
    for major in ("17", "16", "15"):
        candidate = Path(f"/usr/lib/postgresql/{major}/bin")
        if (candidate / "postgres").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found is None:
        raise RuntimeError("PostgreSQL server binaries are missing; run `make install`")
    return Path(found).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_postgres(path: Path) -> None:
    entry = pwd.getpwnam(PG_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def make_pg_tempdir(prefix: str = "medvault-pg-") -> Path:
    """A directory the postgres user owns; root's pytest tmp_path is mode 700."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o700)
    as_postgres(path)
    return path


def run_as_postgres(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    input: str | bytes | None = None,
    timeout: float = 600,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    done = subprocess.run(
        ["runuser", "-u", PG_USER, "--", *args],
        env=env,
        capture_output=True,
        text=text,
        input=input,
        timeout=timeout,
        cwd="/tmp",
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {done.returncode}\nstdout: {done.stdout}\n"
            f"stderr: {done.stderr}"
        )
    return done


def popen_as_postgres(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """A background process as postgres that signals reach directly (no runuser between)."""
    entry = pwd.getpwnam(PG_USER)
    return subprocess.Popen(
        list(args),
        env=env,
        cwd="/tmp",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
    )


class PgCluster:
    def __init__(self, datadir: Path, port: int | None = None) -> None:
        self.datadir = datadir
        self.port = port or free_port()
        self.bindir = pg_bindir()
        self.logfile = datadir.parent / f"{datadir.name}.log"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=postgres user={PG_USER}"

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={PG_USER}"

    def initdb(self, *, checksums: bool = False, settings: dict[str, str] | None = None) -> None:
        args = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U", PG_USER]
        if checksums:
            args.append("--data-checksums")
        run_as_postgres(args)
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.datadir.parent}'",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "shared_buffers": "64MB",
            "fsync": "off",  # throwaway clusters; durability of the archive is medvault's
            "full_page_writes": "on",
            "log_min_messages": "info",
        } | (settings or {})
        with open(self.datadir / "postgresql.conf", "a") as handle:
            for key, value in conf.items():
                handle.write(f"{key} = {value}\n")

    def configure(self, settings: dict[str, str]) -> None:
        with open(self.datadir / "postgresql.conf", "a") as handle:
            for key, value in settings.items():
                handle.write(f"{key} = {value}\n")

    def start(self, wait: bool = True) -> None:
        args = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile)]
        args += ["-w", "-t", "120", "start"] if wait else ["-W", "start"]
        run_as_postgres(args, env=os.environ | {"PGPORT": str(self.port)})

    def stop(self, mode: str = "fast") -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        run_as_postgres(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"],
            check=False,
        )

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.dsn_for(dbname), autocommit=autocommit)

    def query(self, sql: str, dbname: str = "postgres", params: Sequence[Any] = ()) -> list[Any]:
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, dbname: str = "postgres") -> Any:
        rows = self.query(sql, dbname)
        return rows[0][0] if rows else None

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        with self.connect(dbname) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def switch_wal(self) -> str:
        return str(self.scalar("SELECT pg_walfile_name(pg_switch_wal())"))

    def wait_archived(self, walname: str, timeout: float = 60) -> None:
        """Until pg_stat_archiver says walname (or a later one) is archived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.query("SELECT last_archived_wal, failed_count FROM pg_stat_archiver")[0]
            if row[0] is not None and row[0] >= walname:
                return
            time.sleep(0.1)
        raise AssertionError(f"{walname} was not archived in {timeout} s\n{self.log()[-3000:]}")

    def pgbench(self, *args: str, dbname: str = "postgres") -> None:
        run_as_postgres(
            [str(self.bindir / "pgbench"), "-h", "127.0.0.1", "-p", str(self.port), *args, dbname]
        )


@contextlib.contextmanager
def running_clusters() -> Iterator[list[PgCluster]]:
    """Every cluster appended to the list is stopped at the end, whatever happened."""
    clusters: list[PgCluster] = []
    try:
        yield clusters
    finally:
        for cluster in clusters:
            with contextlib.suppress(Exception):
                cluster.stop("immediate")


class PgCli:
    """`medvault` as the postgres user, with the world's config file."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = (
            {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")}
            # The world's own run history, written by the postgres user.
            | {"MEDVAULT_STATE_DIR": str(config.parent / "medvault-state")}
            | (env or {})
        )

    def __call__(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        return run_as_postgres(
            [MEDVAULT, "--config", str(self.config), *args],
            env=self.env | (env or {}),
            check=check,
            timeout=timeout,
        )


class PgWorld:
    """A postgres-owned directory with a repository, a config and (once made) a cluster."""

    def __init__(self, base: Path, clusters: list[PgCluster]) -> None:
        self.base = base
        self.clusters = clusters
        self.repo = base / "repo"
        self.key_file = base / "repo.key"
        self.config = base / "medvault.toml"
        self.cli = PgCli(self.config)
        self.cluster = self.new_cluster("main")

    def new_cluster(self, name: str) -> PgCluster:
        cluster = PgCluster(self.base / name)
        self.clusters.append(cluster)
        return cluster

    def init_repository(self) -> None:
        run_as_postgres(
            [MEDVAULT, "--repo", str(self.repo), "init", "--new-key-file", str(self.key_file)]
        )

    def write_config(self, extra_source: str = "", cluster: PgCluster | None = None) -> None:
        cluster = cluster or self.cluster
        self.config.write_text(
            f'[repository.primary]\nurl = "{self.repo}"\nkey_file = "{self.key_file}"\n\n'
            '[tier.critical]\nrpo = "15m"\nrto = "1h"\nfloor = "7y"\n\n'
            f'[source.emr]\nkind = "postgres"\ndsn = "{cluster.dsn}"\n'
            f'pgdata = "{cluster.datadir}"\nrepository = "primary"\ntier = "critical"\n'
            + extra_source
        )
        as_postgres(self.config)

    def tablespace(self, name: str = "space1") -> Path:
        """A tablespace of the world's cluster in a postgres-owned directory beside it."""
        location = self.base / name
        location.mkdir()
        as_postgres(location)
        self.cluster.execute(f"CREATE TABLESPACE {name} LOCATION '{location}'")
        return location

    def archive_command(self, source: str = "emr") -> str:
        return f"'{MEDVAULT} --config {self.config} wal-push {source} %p'"

    def start_archiving_cluster(
        self, *, checksums: bool = False, settings: dict[str, str] | None = None
    ) -> PgCluster:
        """initdb + archive_mode on with medvault's archive_command, started."""
        self.init_repository()
        self.write_config()
        self.cluster.initdb(
            checksums=checksums,
            settings={"archive_mode": "on", "archive_command": self.archive_command()}
            | (settings or {}),
        )
        self.cluster.start()
        return self.cluster
