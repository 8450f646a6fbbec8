"""No program medvault starts carries its secrets, in its environment or on its command line.

medvault runs here with MEDVAULT_PASSWORD, AWS keys and PGPASSWORD in its environment. Every
PostgreSQL program it starts goes through a recording wrapper (the source's pg_bin) that
saves its own environment and argv before becoming the real program; servers are read in
/proc/<postmaster>/environ while they run; a password command records its own.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.faultpoints import Pause, faults_env
from tests.pgcluster import (
    MEDVAULT,
    PgCluster,
    PgWorld,
    as_postgres,
    free_port,
    make_pg_tempdir,
    pg_bindir,
    popen_as_postgres,
    run_as_postgres,
    running_clusters,
)

from conftest import S3Server

DUMPER_PASSWORD = "pg-secret-of-dumper-9043"
SECRETS = {
    "MEDVAULT_PASSWORD": "mv-passphrase-in-env-7731",
    "AWS_ACCESS_KEY_ID": "AKIAMEDVAULTCHILDTEST",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-in-env-5512",
    "PGPASSWORD": DUMPER_PASSWORD,
}
PROGRAMS = ("pg_dump", "pg_restore", "pg_basebackup", "pg_ctl", "pg_controldata")
RECORDER = """#!/bin/sh
# Records this program's environment and argv, then becomes the real program.
record="{records}/$(basename "$0").$$"
cat /proc/$$/environ > "$record.environ"
cat /proc/$$/cmdline > "$record.argv"
exec {real} "$@"
"""


def make_recorders(bindir: Path, records: Path, programs: tuple[str, ...] = PROGRAMS) -> None:
    bindir.mkdir()
    records.mkdir()
    as_postgres(records)
    for name in programs:
        script = bindir / name
        script.write_text(RECORDER.format(records=records, real=pg_bindir() / name))
        script.chmod(0o755)


def environ_names(environ: bytes) -> list[str]:
    return [entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry]


def assert_carries_no_secret(what: str, environ: bytes, argv: bytes = b"") -> None:
    names = environ_names(environ)
    leaked = [n for n in names if n.startswith(("MEDVAULT_", "AWS_")) or n == "PGPASSWORD"]
    assert not leaked, f"{what} inherited {leaked}"
    for name, secret in SECRETS.items():
        assert secret.encode() not in environ, f"{what} carries {name}'s value"
        assert secret.encode() not in argv, f"{what} has {name}'s value on its command line"


def recorded(records: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    """Program name -> (environ, argv) of each run the wrappers saw."""
    runs: dict[str, list[tuple[bytes, bytes]]] = {}
    for environ in sorted(records.glob("*.environ")):
        name = environ.name.rsplit(".", 2)[0]
        argv = environ.with_suffix(".argv").read_bytes()
        runs.setdefault(name, []).append((environ.read_bytes(), argv))
    return runs


def postmaster_environ(pgdata: Path) -> bytes:
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    return Path(f"/proc/{pid}/environ").read_bytes()


@dataclass
class Site:
    world: PgWorld
    records: Path
    physical: str  # a full physical snapshot of emr
    logical: str  # a logical snapshot of emr_pw, taken as the password-protected role
    between: str  # a time with a commit archived after it

    def fresh_records(self) -> Path:
        for path in self.records.iterdir():
            path.unlink()
        return self.records

    def cluster(self, name: str) -> tuple[PgCluster, int]:
        port = free_port()
        cluster = PgCluster(self.world.base / name, port)
        self.world.clusters.append(cluster)
        return cluster, port


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """An archiving cluster whose client programs are recording wrappers, a repository that
    opens with MEDVAULT_PASSWORD, a role `dumper` that must give a password, and backups."""
    base = make_pg_tempdir("medvault-child-secrets-")
    with running_clusters() as clusters:
        world = PgWorld(base, clusters)
        records = base / "records"
        make_recorders(base / "bin", records)
        cluster = world.cluster
        pg_bin = f'pg_bin = "{base / "bin"}"\n'
        world.init_repository()
        world.write_config(
            pg_bin + f'\n[source.emr_pw]\nkind = "postgres"\n{pg_bin}'
            f'dsn = "host=127.0.0.1 port={cluster.port} dbname=emr user=dumper"\n'
        )
        cluster.initdb(settings={"archive_mode": "on", "archive_command": world.archive_command()})
        hba = cluster.datadir / "pg_hba.conf"
        hba.write_text("host all dumper 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        cluster.start()
        world.cli("key", "add", env={"MEDVAULT_NEW_PASSWORD": SECRETS["MEDVAULT_PASSWORD"]})
        cluster.execute(f"CREATE ROLE dumper LOGIN CREATEDB PASSWORD '{DUMPER_PASSWORD}'")
        cluster.execute("CREATE DATABASE emr OWNER dumper")
        cluster.execute(
            "CREATE TABLE patients AS SELECT g AS id FROM generate_series(1, 300) g;"
            " ALTER TABLE patients OWNER TO dumper",
            "emr",
        )
        physical = world.cli("backup", "emr", "--type", "full", "--json", env=SECRETS)
        logical = world.cli("backup", "emr_pw", "--logical", "--json", env=SECRETS)
        cluster.execute("INSERT INTO patients VALUES (301)", "emr")
        between = cluster.scalar("SELECT clock_timestamp()").isoformat()
        cluster.execute("INSERT INTO patients VALUES (302)", "emr")
        cluster.wait_archived(cluster.switch_wal())
        yield Site(
            world,
            records,
            json.loads(physical.stdout)["snapshot"],
            json.loads(logical.stdout)["snapshot"],
            between,
        )
    shutil.rmtree(base, ignore_errors=True)


def test_pg_dump_gets_the_password_through_a_passfile_never_argv_or_environment(
    site: Site,
) -> None:
    records = site.fresh_records()
    done = site.world.cli("backup", "emr_pw", "--logical", "--json", env=SECRETS)
    assert json.loads(done.stdout)["database"] == "emr"  # the password reached pg_dump
    runs = recorded(records)["pg_dump"]
    for environ, argv in runs:  # `pg_dump --version`, then the dump
        assert_carries_no_secret("pg_dump", environ, argv)
    (dump_environ,) = [environ for environ, argv in runs if b"--snapshot=" in argv]
    assert b"PGPASSFILE=/dev/fd/" in dump_environ


def test_pg_restore_carries_no_secret(site: Site) -> None:
    records = site.fresh_records()
    site.world.cli(
        "restore", site.logical, "--database", "emr_copy", "--table", "patients", env=SECRETS
    )
    assert site.world.cluster.scalar("SELECT count(*) FROM patients", "emr_copy") == 300
    runs = recorded(records)["pg_restore"]
    assert len(runs) >= 2, "the table of contents is listed, then the restore runs"
    for environ, argv in runs:
        assert_carries_no_secret("pg_restore", environ, argv)


def test_pg_basebackup_carries_no_secret(site: Site) -> None:
    records = site.fresh_records()
    site.world.cli("backup", "emr", "--method", "stream", env=SECRETS)
    ((environ, argv),) = recorded(records)["pg_basebackup"]
    assert_carries_no_secret("pg_basebackup", environ, argv)


def test_a_server_started_by_restore_carries_no_secret(site: Site) -> None:
    records = site.fresh_records()
    restored, port = site.cluster("restored")
    site.world.cli(
        "restore",
        site.physical,
        "--pgdata",
        str(restored.datadir),
        "--start",
        "--port",
        str(port),
        env=SECRETS,
    )
    assert restored.scalar("SELECT count(*) FROM patients", "emr") == 302  # WAL was fetched
    assert_carries_no_secret("the restored postmaster", postmaster_environ(restored.datadir))
    for environ, argv in recorded(records)["pg_ctl"]:
        assert_carries_no_secret("pg_ctl", environ, argv)


def test_a_server_started_by_pitr_carries_no_secret(site: Site) -> None:
    records = site.fresh_records()
    restored, port = site.cluster("pitr")
    site.world.cli(
        "pitr",
        "emr",
        "--target-time",
        site.between,
        "--pgdata",
        str(restored.datadir),
        "--start",
        "--port",
        str(port),
        env=SECRETS,
    )
    assert restored.scalar("SELECT max(id) FROM patients", "emr") == 301
    assert_carries_no_secret("the postmaster of pitr", postmaster_environ(restored.datadir))
    for environ, argv in recorded(records)["pg_ctl"]:
        assert_carries_no_secret("pg_ctl", environ, argv)


def test_a_drill_server_carries_no_secret(site: Site) -> None:
    records = site.fresh_records()
    scratch = site.world.base / "scratch"
    scratch.mkdir()
    as_postgres(scratch)
    pause = Pause(site.world.base / "pause", "drill.server-running")
    as_postgres(pause.folder)
    env = site.world.cli.env | SECRETS | faults_env(**{pause.name: pause.action})
    command = [MEDVAULT, "--config", str(site.world.config), "drill", "emr", "--scratch"]
    proc = popen_as_postgres([*command, str(scratch), "--json"], env)
    try:
        pause.wait(proc)
        (pgdata,) = scratch.glob("*/pgdata")
        assert_carries_no_secret("the drill's postmaster", postmaster_environ(pgdata))
    finally:
        pause.release()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and json.loads(out)["ok"], err
    for environ, argv in recorded(records)["pg_ctl"]:
        assert_carries_no_secret("the drill's pg_ctl", environ, argv)


PASSWORD_COMMAND = """#!/bin/sh
cat /proc/$$/environ > {records}/password-command.environ
cat /proc/$$/cmdline > {records}/password-command.argv
echo '{passphrase}'
"""


def test_a_password_command_sees_no_secret(site: Site) -> None:
    records = site.fresh_records()
    command = site.world.base / "bin" / "passphrase"
    command.write_text(
        PASSWORD_COMMAND.format(records=records, passphrase=SECRETS["MEDVAULT_PASSWORD"])
    )
    command.chmod(0o755)
    site.world.cli("--password-command", str(command), "snapshots", env=SECRETS)
    environ = (records / "password-command.environ").read_bytes()
    assert_carries_no_secret("the password command", environ)
    assert "PATH" in environ_names(environ) and "HOME" in environ_names(environ)


def test_a_server_restored_from_s3_carries_the_store_keys_and_nothing_else(
    s3_server: S3Server, pg_world: PgWorld
) -> None:
    """Its restore_command (`medvault wal-fetch`) must reach the bucket: with the access keys
    in medvault's environment and no credential file, the server carries those, and only
    those; never the passphrase or PGPASSWORD."""
    world = pg_world
    keys = {
        "AWS_ACCESS_KEY_ID": SECRETS["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
    }
    world.cli.env.update(s3_server.env | keys)  # the local S3 server takes any keys
    url = f"s3://{s3_server.new_bucket()}/emr"
    run_as_postgres(
        [MEDVAULT, "--repo", url, "init", "--new-key-file", str(world.key_file)], env=world.cli.env
    )
    cluster = world.cluster
    world.config.write_text(
        f'[repository.primary]\nurl = "{url}"\nkey_file = "{world.key_file}"\n\n'
        f'[source.emr]\nkind = "postgres"\ndsn = "{cluster.dsn}"\n'
        f'pgdata = "{cluster.datadir}"\nrepository = "primary"\n'
    )
    as_postgres(world.config)
    cluster.initdb(settings={"archive_mode": "on", "archive_command": world.archive_command()})
    cluster.start()
    world.cli("key", "add", env={"MEDVAULT_NEW_PASSWORD": SECRETS["MEDVAULT_PASSWORD"]})
    snapshot = json.loads(world.cli("backup", "emr", "--type", "full", "--json").stdout)
    cluster.execute("CREATE TABLE patients AS SELECT g AS id FROM generate_series(1, 42) g")
    cluster.wait_archived(cluster.switch_wal())
    restored = world.new_cluster("restored")
    restored.port = free_port()
    world.cli(
        "restore",
        snapshot["snapshot"],
        "--pgdata",
        str(restored.datadir),
        "--start",
        "--port",
        str(restored.port),
        env=SECRETS,
    )
    assert restored.scalar("SELECT count(*) FROM patients") == 42  # WAL came from the bucket
    environ = postmaster_environ(restored.datadir)
    carried = {
        name: value
        for name, _, value in (e.decode().partition("=") for e in environ.split(b"\0") if e)
    }
    assert carried["AWS_SECRET_ACCESS_KEY"] == keys["AWS_SECRET_ACCESS_KEY"]
    assert carried["AWS_ENDPOINT_URL"] == s3_server.endpoint
    assert "MEDVAULT_PASSWORD" not in carried and "PGPASSWORD" not in carried
    assert SECRETS["MEDVAULT_PASSWORD"].encode() not in environ
    assert SECRETS["PGPASSWORD"].encode() not in environ


def test_with_an_aws_profile_a_restored_server_gets_no_access_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from medvault import childenv

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRETS["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/etc/medvault/aws-credentials")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    carried = childenv.store_access("s3://bucket/emr", profile="backup", keys_in_config=False)
    assert carried == {
        "AWS_SHARED_CREDENTIALS_FILE": "/etc/medvault/aws-credentials",
        "AWS_REGION": "eu-central-1",
    }
    assert childenv.store_access("/srv/vault", profile=None, keys_in_config=False) == {}


def test_a_postgres_dsn_child_gets_the_passfile_named_in_its_dsn_when_pgpassword_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PGPASSWORD outranks a dsn's passfile for medvault's own connections; its children
    must use the same password, so the dsn they get names their private passfile."""
    from psycopg.conninfo import conninfo_to_dict

    from medvault import childenv

    monkeypatch.setenv("PGPASSWORD", DUMPER_PASSWORD)
    with childenv.libpq_client("host=db user=dumper passfile=/etc/emr.pgpass") as client:
        assert client.dsn is not None
        passfile = conninfo_to_dict(client.dsn)["passfile"]
        assert passfile == client.env["PGPASSFILE"] == f"/dev/fd/{client.pass_fds[0]}"
        with open(passfile, "rb") as handle:
            assert handle.read() == f"*:*:*:*:{DUMPER_PASSWORD}\n".encode()
        assert os.stat(passfile).st_mode & 0o777 == 0o600
    assert "PGPASSWORD" not in client.env
