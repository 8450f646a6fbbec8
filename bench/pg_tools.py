"""Drivers for the PostgreSQL benchmark (bench/pg_run.py): medvault and pgBackRest against the
same throwaway cluster, both run as the `postgres` user the way a DBA runs them.

Every command runs under `/usr/bin/time` (inside `runuser`, so it measures the tool, not
runuser) for peak RSS and CPU; the wall time is taken here around the whole process, start-up
included. Each tool gets a private directory under the run's base directory: repository,
config, logs, spool. Nothing here holds patient data: the cluster is pgbench's.

Run as a script (`python bench/pg_tools.py wal-push CONFIG SOURCE PATH`) it is a stand-in
archive_command for a medvault that has no `wal-push` command yet: the same library call
(`push_file`) without the CLI around it. Only used so physical backups can be measured
meanwhile; WAL figures taken with it are marked and never compared.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# bench/ and tests/ (the throwaway-cluster harness) are plain directories, not packages.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tools import TIME_BIN, Measured, ToolError

from pgcluster import MEDVAULT, PgCluster, as_postgres

PGBACKREST = "pgbackrest"
STANZA = "bench"
SOURCE = "emr"
BENCH_DIR = Path(__file__).resolve().parent
PYTHON = str(Path(MEDVAULT).parent / "python")


def pg_env() -> dict[str, str]:
    """Root's environment minus medvault's variables; C locale for parseable messages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDVAULT_", "PGBACKREST_"))}
    env["LC_ALL"] = "C.UTF-8"
    return env


def pg_dir(path: Path) -> Path:
    """A directory the postgres user owns (mode 700), created if missing."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    as_postgres(path)
    return path


def run_pg_measured(
    argv: list[str],
    stats_dir: Path,
    *,
    ok: tuple[int, ...] = (0,),
    shell: bool = False,
    timeout: float = 3600,
) -> Measured:
    """Run argv as postgres; wall time, peak RSS and CPU of the tool; ToolError on failure.
    shell=True runs argv[0] through `sh -c` (for a redirection, as `pg_dump > file`)."""
    stats = stats_dir / f".time-{os.getpid()}-{time.monotonic_ns()}"
    command = ["sh", "-c", argv[0]] if shell else argv
    use_time = os.access(TIME_BIN, os.X_OK)
    full = [TIME_BIN, "-o", str(stats), "-f", "%M %U %S", *command] if use_time else command
    started = time.perf_counter()
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", *full],
        env=pg_env(),
        capture_output=True,
        text=True,
        check=False,
        cwd="/tmp",
        timeout=timeout,
    )
    seconds = time.perf_counter() - started
    rss_kb, user_s, sys_s = 0, 0.0, 0.0
    if use_time and stats.exists():
        fields = stats.read_text().strip().splitlines()[-1].split()
        stats.unlink()
        with contextlib.suppress(ValueError, IndexError):
            rss_kb, user_s, sys_s = int(fields[0]), float(fields[1]), float(fields[2])
    if done.returncode not in ok:
        tail = (done.stderr or done.stdout).strip().splitlines()[-4:]
        shown = argv[0][:80] if shell else " ".join(Path(a).name for a in argv[:4])
        raise ToolError(f"{shown}... exited with {done.returncode}: " + " | ".join(tail))
    return Measured(seconds, rss_kb, user_s, sys_s, done.stdout, done.stderr)


def wal_push_available() -> bool:
    done = subprocess.run([MEDVAULT, "wal-push", "--help"], capture_output=True, check=False)
    return done.returncode == 0


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class MedvaultPg:
    """medvault with one repository (key-file slot: fast to open) and a config naming the
    cluster as source `emr`; `async_config` is the same with wal_async = true."""

    name = "medvault"

    def __init__(
        self, home: Path, cluster: PgCluster, *, shim: bool = False, binary: str = MEDVAULT
    ) -> None:
        self.binary = binary  # another checkout's medvault, for bench/ab_trees.py
        self.home = pg_dir(home)
        self.cluster = cluster
        self.repo = home / "repo"
        self.key_file = home / "repo.key"
        self.config = home / "medvault.toml"
        self.async_config = home / "medvault-async.toml"
        self.shim = shim  # archive through the library stand-in (no `wal-push` command yet)

    @staticmethod
    def version() -> str:
        done = subprocess.run([MEDVAULT, "--version"], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    def run(self, *args: str, ok: tuple[int, ...] = (0,), config: Path | None = None) -> Measured:
        argv = [self.binary, "--config", str(config or self.config), *args]
        return run_pg_measured(argv, self.home, ok=ok)

    def init(self) -> None:
        run_pg_measured(
            [self.binary, "--repo", str(self.repo), "init", "--new-key-file", str(self.key_file)],
            self.home,
        )
        for path, extra in ((self.config, ""), (self.async_config, "wal_async = true\n")):
            path.write_text(
                f'[repository.primary]\nurl = "{self.repo}"\nkey_file = "{self.key_file}"\n\n'
                '[tier.critical]\nrpo = "15m"\nrto = "1h"\nfloor = "7y"\n\n'
                f'[source.{SOURCE}]\nkind = "postgres"\ndsn = "{self.cluster.dsn}"\n'
                f'pgdata = "{self.cluster.datadir}"\nrepository = "primary"\n'
                f'tier = "critical"\narchive_timeout_s = 120\n{extra}'
            )
            as_postgres(path)

    def archive_command(self, async_: bool = False) -> str:
        config = self.async_config if async_ else self.config
        if self.shim:
            return f"{PYTHON} {BENCH_DIR / 'pg_tools.py'} wal-push {config} {SOURCE} %p"
        return f"{self.binary} --config {config} wal-push {SOURCE} %p"

    def backup(self, backup_type: str) -> tuple[Measured, dict[str, Any]]:
        result = self.run("backup", SOURCE, "--type", backup_type, "--json")
        facts = json.loads(result.stdout)
        if not facts.get("complete", False):
            raise ToolError(f"medvault reported an incomplete backup: {result.stdout[:300]}")
        keep = ("snapshot", "files_new", "files_changed", "files_unchanged", "bytes_read")
        return result, {k: facts.get(k) for k in (*keep, "bytes_added", "checksum_failures")}

    def backup_logical(self, database: str) -> tuple[Measured, dict[str, Any]]:
        result = self.run("backup", SOURCE, "--logical", "--database", database, "--json")
        facts = json.loads(result.stdout)
        return result, {k: facts.get(k) for k in ("snapshot", "rows", "bytes_read", "bytes_added")}

    def restore(self, pgdata: Path) -> Measured:
        return self.run(
            "restore", f"latest:{SOURCE}", "--pgdata", str(pgdata), "--target", "immediate"
        )

    def wal_push(self, path: Path, async_: bool = False) -> Measured:
        command = self.archive_command(async_).replace("%p", str(path))
        return run_pg_measured(command.split(), self.home)

    def repo_bytes(self) -> int:
        return dir_bytes(self.repo)

    def cleanup(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


class PgBackRest:
    """pgBackRest with one stanza in a private repo1-path: zst, process-max=2, start-fast,
    archive-check (its backup waits for its WAL, as medvault's does)."""

    name = "pgbackrest"

    def __init__(self, home: Path, cluster: PgCluster, *, cipher: bool = False) -> None:
        self.home = pg_dir(home)
        self.cluster = cluster
        self.repo = home / "repo"
        self.config = home / "pgbackrest.conf"
        self.async_config = home / "pgbackrest-async.conf"
        self.cipher = cipher

    @staticmethod
    def version() -> str:
        done = subprocess.run([PGBACKREST, "version"], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    @staticmethod
    def available() -> bool:
        return shutil.which(PGBACKREST) is not None

    def init(self) -> None:
        for sub in ("log", "lock", "spool"):
            pg_dir(self.home / sub)
        cipher = (
            "repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=bench-correct-horse-battery\n"
            if self.cipher
            else ""
        )
        for path, async_ in ((self.config, "n"), (self.async_config, "y")):
            path.write_text(
                f"[global]\nrepo1-path={self.repo}\nrepo1-retention-full=99\n{cipher}"
                "compress-type=zst\nprocess-max=2\nstart-fast=y\narchive-check=y\n"
                f"log-path={self.home / 'log'}\nlock-path={self.home / 'lock'}\n"
                f"spool-path={self.home / 'spool'}\nlog-level-console=warn\n"
                f"log-level-file=info\narchive-async={async_}\n\n"
                f"[{STANZA}]\npg1-path={self.cluster.datadir}\npg1-port={self.cluster.port}\n"
                f"pg1-socket-path={self.cluster.datadir.parent}\n"
            )
            path.chmod(0o600)
            as_postgres(path)
        self.run("stanza-create")

    def run(self, *args: str, config: Path | None = None) -> Measured:
        argv = [PGBACKREST, f"--config={config or self.config}", f"--stanza={STANZA}", *args]
        return run_pg_measured(argv, self.home)

    def archive_command(self, async_: bool = False) -> str:
        config = self.async_config if async_ else self.config
        return f"{PGBACKREST} --config={config} --stanza={STANZA} archive-push %p"

    def backup(self, backup_type: str) -> tuple[Measured, dict[str, Any]]:
        kind = {"full": "full", "incremental": "incr"}[backup_type]
        result = self.run("backup", f"--type={kind}")
        return result, {}

    def restore(self, pgdata: Path) -> Measured:
        # restore_command spelled out: the generated one names neither our --config nor the
        # new pg1-path (archive-get refuses a data directory other than the configured one).
        restore_command = (
            f"restore_command={PGBACKREST} --config={self.config} --stanza={STANZA} "
            f'--pg1-path={pgdata} archive-get %f "%p"'
        )
        return self.run(
            "restore",
            f"--pg1-path={pgdata}",
            "--type=immediate",
            "--target-action=promote",
            f"--recovery-option={restore_command}",
        )

    def wal_push(self, path: Path, async_: bool = False) -> Measured:
        command = self.archive_command(async_).replace("%p", str(path))
        return run_pg_measured(command.split(), self.home)

    def repo_bytes(self) -> int:
        return dir_bytes(self.repo / "backup")

    def cleanup(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def _shim_wal_push(config: str, source: str, path: str) -> int:
    """The stand-in archive_command: open the repository as the CLI would, push one file."""
    from medvault.cli.context import CliContext
    from medvault.credentials import CredentialOptions
    from medvault.errors import MedvaultError
    from medvault.repository.wal import WalArchive
    from medvault.sources.postgres.wal import push_file

    try:
        cli = CliContext(
            repo_option=None,
            config_option=config,
            credentials=CredentialOptions(None, None, None),
        )
        push_file(WalArchive(cli.open(source), source), path)
    except MedvaultError as exc:
        print(f"pg_tools wal-push: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    return 0


def _profile(out: str, argv: list[str]) -> int:
    """Run the script argv[0] under cProfile, every thread included (cProfile alone sees only
    the main one, and medvault decodes, hashes and writes on pool threads); merged stats go
    to out."""
    import cProfile
    import pstats
    import runpy
    import threading

    profiles: list[cProfile.Profile] = []
    thread_run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
        try:
            thread_run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main = cProfile.Profile()
    sys.argv = argv
    code = 0
    main.enable()
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        main.disable()
        stats = pstats.Stats(main)
        for profile in profiles:
            stats.add(profile)
        stats.dump_stats(out)
    return code


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "wal-push":
        sys.exit(_shim_wal_push(*sys.argv[2:]))
    if len(sys.argv) > 3 and sys.argv[1] == "profile":
        sys.exit(_profile(sys.argv[2], sys.argv[3:]))
    sys.exit("usage: pg_tools.py wal-push CONFIG SOURCE PATH | profile OUT SCRIPT [ARGS...]")
