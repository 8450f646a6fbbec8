"""PostgreSQL's programs (pg_dump, pg_restore, pg_basebackup, pg_ctl, pg_controldata): the
one matching a server's major version, what version a program is, and the last lines of
what it says on stderr."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import IO

from medvault import childenv
from medvault.errors import ConfigError, SourceUnavailable

STDERR_LINES = 20


def find_program(name: str, pg_bin: str | None = None, major: int | None = None) -> str:
    """A PostgreSQL program: from pg_bin when configured, else the one matching the server's
    major version (a pg_dump older than the server refuses to run), else PATH."""
    if pg_bin:
        candidate = Path(pg_bin) / name
        if not os.access(candidate, os.X_OK):
            raise ConfigError(f"pg_bin: {candidate} is not an executable program")
        return str(candidate)
    majors = [str(major)] if major else []
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        installed = [p.name for p in base.iterdir() if p.name.isdigit()]
        majors += sorted(installed, key=int, reverse=True)
    for candidate_major in majors:
        candidate = base / candidate_major / "bin" / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SourceUnavailable(
            f"{name} is not installed; install PostgreSQL's client programs or set pg_bin"
        )
    return found


def program_version(program: str) -> str:
    """`pg_dump --version` as printed, e.g. 'pg_dump (PostgreSQL) 15.8'."""
    try:
        done = subprocess.run(
            [program, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env=childenv.minimal(),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SourceUnavailable(f"cannot run {program}: {exc}") from None
    return done.stdout.strip()


def program_major(version: str) -> int | None:
    match = re.search(r"\)\s*(\d+)", version)
    return int(match.group(1)) if match else None


class StderrTail:
    """Reads a child's stderr in a thread, keeping only its last lines (bounded memory)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: deque[str] = deque(maxlen=STDERR_LINES)
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="medvault-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for raw in self._stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.lines.append(line)

    def summary(self) -> str:
        """The line that says what went wrong: the first error line, else the last line."""
        self._thread.join(timeout=5)
        errors = [line for line in self.lines if "error:" in line or "FATAL:" in line]
        line = errors[0] if errors else (self.lines[-1] if self.lines else "no message")
        return line[:400]
