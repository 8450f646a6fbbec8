"""Drivers for the backup tools under test: medvault, restic and BorgBackup.

Each command runs under `/usr/bin/time` for its peak RSS and CPU time; the wall time is taken
here around the whole process, start-up included, the same way for every tool. Secrets go
through the environment, never argv. Every repository gets its own cache/config directories
beside it, so runs cannot see each other's state.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "bench-correct-horse-battery-staple"
TIME_BIN = "/usr/bin/time"
MEDVAULT_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "medvault"


class ToolError(Exception):
    pass


@dataclass
class Measured:
    seconds: float  # wall clock of the whole process
    rss_kb: int  # peak resident set size of the process
    user_s: float
    sys_s: float
    stdout: str
    stderr: str


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("MEDVAULT_", "RESTIC_", "BORG_")):
            del env[name]
    env["LC_ALL"] = "C.UTF-8"
    return env


def run_measured(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    ok_codes: tuple[int, ...] = (0,),
    stats_file: Path | None = None,
) -> Measured:
    """Run argv, return its wall time, peak RSS and CPU time; raise ToolError on failure."""
    stats = stats_file or cwd / ".time-stats"
    use_time = os.access(TIME_BIN, os.X_OK)
    full = [TIME_BIN, "-o", str(stats), "-f", "%M %U %S", *argv] if use_time else argv
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(full, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in ok_codes:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ToolError(
            f"{' '.join(argv[:4])}... exited with {done.returncode}: " + " | ".join(tail)
        )
    if use_time:
        last = stats.read_text().strip().splitlines()[-1].split()
        stats.unlink()
        rss_kb, user_s, sys_s = int(last[0]), float(last[1]), float(last[2])
    else:  # ru_maxrss of children is a high-water mark over all of them: an upper bound
        rss_kb = after.ru_maxrss
        user_s = after.ru_utime - before.ru_utime
        sys_s = after.ru_stime - before.ru_stime
    return Measured(seconds, rss_kb, user_s, sys_s, done.stdout, done.stderr)


def tree_bytes(path: Path) -> int:
    """Apparent size of every file below path."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


class Tool:
    """One tool bound to one repository directory (and its private state beside it)."""

    name = "tool"
    binary = ""

    def __init__(self, home: Path) -> None:
        self.home = home  # holds repo/, state and restore targets; removed by cleanup()
        self.repo = home / "repo"
        home.mkdir(parents=True, exist_ok=True)
        self.env = _clean_env()

    @classmethod
    def available(cls) -> bool:
        return shutil.which(cls.binary) is not None or Path(cls.binary).is_file()

    @classmethod
    def version(cls) -> str:
        raise NotImplementedError

    def run(self, argv: list[str], cwd: Path | None = None, ok: tuple[int, ...] = (0,)) -> Measured:
        return run_measured(argv, self.env, cwd or self.home, ok, self.home / ".time-stats")

    def init(self) -> None:
        raise NotImplementedError

    def backup(self, data: Path, incremental: bool) -> Measured:
        raise NotImplementedError

    def restore(self, target: Path) -> Measured:
        """Restore the latest snapshot into target; data lands at target/<absolute path>."""
        raise NotImplementedError

    def check(self) -> Measured:
        raise NotImplementedError

    def repo_bytes(self) -> int:
        return tree_bytes(self.repo)

    def backup_facts(self, result: Measured) -> dict[str, object]:
        """Whatever the tool reports about a backup (files seen, bytes added)."""
        return {}

    def cleanup(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


class Medvault(Tool):
    name = "medvault"
    binary = str(MEDVAULT_BIN)
    extra_backup_args: tuple[str, ...] = ()

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.env["MEDVAULT_PASSWORD"] = PASSWORD

    @classmethod
    def version(cls) -> str:
        out = subprocess.run([cls.binary, "--version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def init(self) -> None:
        self.run([self.binary, "--repo", str(self.repo), "init"])

    def backup(self, data: Path, incremental: bool) -> Measured:
        kind = "incremental" if incremental else "full"
        argv = [self.binary, "--repo", str(self.repo), "backup", str(data), "--source", "bench"]
        result = self.run([*argv, "--type", kind, "--json", *self.extra_backup_args])
        facts = json.loads(result.stdout)
        if not facts.get("complete", False):
            raise ToolError(f"medvault reported an incomplete backup: {result.stdout[:500]}")
        return result

    def backup_facts(self, result: Measured) -> dict[str, object]:
        doc = json.loads(result.stdout)
        keys = ("files_new", "files_changed", "files_unchanged", "bytes_read", "bytes_added")
        return {k: doc.get(k) for k in keys}

    def restore(self, target: Path) -> Measured:
        return self.run(
            [self.binary, "--repo", str(self.repo), "restore", "latest", "--target", str(target)]
        )

    def check(self) -> Measured:
        return self.run([self.binary, "--repo", str(self.repo), "check", "--read-data"])


class MedvaultNoVerify(Medvault):
    """medvault without its decode-before-write check: full backups only, for its cost."""

    name = "medvault-noverify"
    extra_backup_args = ("--no-verify-blobs",)


class Restic(Tool):
    name = "restic"
    binary = "restic"

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.env["RESTIC_PASSWORD"] = PASSWORD
        self.env["RESTIC_CACHE_DIR"] = str(home / "cache")

    @classmethod
    def version(cls) -> str:
        out = subprocess.run([cls.binary, "version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def init(self) -> None:
        # restic 0.14 creates repository format v2 by default: compression "auto" (zstd).
        self.run([self.binary, "-r", str(self.repo), "init"])

    def backup(self, data: Path, incremental: bool) -> Measured:
        # A second backup of the same path finds its parent snapshot by itself.
        return self.run([self.binary, "-r", str(self.repo), "backup", "--json", str(data)])

    def backup_facts(self, result: Measured) -> dict[str, object]:
        for line in reversed(result.stdout.splitlines()):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("message_type") == "summary":
                keys = ("files_new", "files_changed", "files_unmodified", "data_added")
                return {k: doc.get(k) for k in keys}
        return {}

    def restore(self, target: Path) -> Measured:
        return self.run(
            [self.binary, "-r", str(self.repo), "restore", "latest", "--target", str(target)]
        )

    def check(self) -> Measured:
        return self.run([self.binary, "-r", str(self.repo), "check", "--read-data"])


class Borg(Tool):
    name = "borg"
    binary = "borg"

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        base = home / "borg-home"
        self.env.update(
            BORG_PASSPHRASE=PASSWORD,
            BORG_BASE_DIR=str(base),
            BORG_CACHE_DIR=str(base / "cache"),
            BORG_CONFIG_DIR=str(base / "config"),
            BORG_SECURITY_DIR=str(base / "security"),
            BORG_KEYS_DIR=str(base / "keys"),
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        )
        self._archives = 0

    @classmethod
    def version(cls) -> str:
        out = subprocess.run([cls.binary, "--version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def init(self) -> None:
        self.run([self.binary, "init", "--encryption", "repokey-blake2", str(self.repo)])

    def backup(self, data: Path, incremental: bool) -> Measured:
        self._archives += 1
        archive = f"{self.repo}::snap{self._archives}"
        # Exit code 1 is borg's "warning" (e.g. a file changed while read): still a backup.
        return self.run(
            [self.binary, "create", "--json", "--compression", "zstd,1", archive, str(data)],
            ok=(0, 1),
        )

    def backup_facts(self, result: Measured) -> dict[str, object]:
        try:
            stats = json.loads(result.stdout)["archive"]["stats"]
        except (ValueError, KeyError):
            return {}
        return {"nfiles": stats.get("nfiles"), "deduplicated_size": stats.get("deduplicated_size")}

    def restore(self, target: Path) -> Measured:
        target.mkdir(parents=True, exist_ok=True)
        archive = f"{self.repo}::snap{self._archives}"
        return self.run([self.binary, "extract", archive], cwd=target)

    def check(self) -> Measured:
        return self.run([self.binary, "check", "--verify-data", str(self.repo)])


TOOLS: dict[str, type[Tool]] = {cls.name: cls for cls in (Medvault, MedvaultNoVerify, Restic, Borg)}
