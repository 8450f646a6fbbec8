"""Jobs as child processes: a backup's memory, and a crash, stay out of the service.

`ProcessLauncher` starts `COMMAND --job NAME --result FILE` (the job runner,
`python -m medvault.cli.jobrun --config FILE`) in a session of its own, with stdin from
/dev/null and stdout and stderr appended to `<directory>/logs/<job>.log`. The runner writes
the ids and outcome of its runs to the result file as they happen (renamed into place, so
the file is whole whenever it is read). Stopping sends SIGINT to the child's process group,
as Ctrl-C in a terminal would: medvault ends the run as interrupted and releases its locks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medvault.processes import process_start
from medvault.scheduler.jobs import Job
from medvault.scheduler.loop import Outcome
from medvault.scheduler.state import Current

LOG_LIMIT = 16 * 1024 * 1024  # a job's log is rotated once (to .log.1) beyond this
EXIT_INTERRUPTED = 130


def log_name(job_name: str) -> str:
    return job_name.replace("/", "_") + ".log"


def read_result(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def last_error_line(log: Path, offset: int) -> str | None:
    """The last line the child wrote that says what went wrong (medvault writes errors as
    one line `medvault: error: …`), else its last line."""
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            text = handle.read()[-65536:].decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    found = errors or lines
    return found[-1] if found else None


class ChildJob:
    """One launched (or adopted) child."""

    def __init__(
        self,
        result: Path,
        log: Path,
        log_offset: int,
        popen: subprocess.Popen[bytes] | None = None,
        adopted: Current | None = None,
    ) -> None:
        self._popen = popen
        self._adopted = adopted
        self.result = result
        self.log = log
        self._offset = log_offset

    @property
    def pid(self) -> int | None:
        if self._popen is not None:
            return self._popen.pid
        return self._adopted.pid if self._adopted is not None else None

    def _exit_code(self) -> tuple[bool, int | None]:
        """(ended, exit code when known)."""
        if self._popen is not None:
            code = self._popen.poll()
            return code is not None, code
        assert self._adopted is not None and self._adopted.pid is not None
        ended = process_start(self._adopted.pid) != self._adopted.pid_start
        return ended, None  # not our child: its code went to the scheduler before us

    def run_ids(self) -> tuple[str, ...]:
        doc = read_result(self.result)
        return tuple(str(run["run_id"]) for run in doc.get("runs", ()) if "run_id" in run)

    def poll(self) -> Outcome | None:
        ended, code = self._exit_code()
        if not ended:
            return None
        doc = read_result(self.result)
        with contextlib.suppress(OSError):
            self.result.unlink()
        ids = tuple(str(run["run_id"]) for run in doc.get("runs", ()) if "run_id" in run)
        status = doc.get("status")
        if code is not None and code < 0:
            status = "killed" if code == -signal.SIGKILL else "interrupted"
        elif not isinstance(status, str) or status == "running":
            status = "interrupted" if code == EXIT_INTERRUPTED else "failed"
        error = doc.get("error") if isinstance(doc.get("error"), str) else None
        if status != "ok" and error is None:
            error = last_error_line(self.log, self._offset)
        return Outcome(status, code if code is not None else doc.get("exit_code"), ids, error)

    def _signal(self, sig: signal.Signals) -> None:
        pid = self.pid
        if pid is None or self._exit_code()[0]:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # its own session: the group is the child and its children

    def interrupt(self) -> None:
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


class ProcessLauncher:
    """Starts `command --job NAME --result FILE`; `directory` holds `logs/` and `runs/`."""

    def __init__(
        self,
        command: Sequence[str],
        directory: Path,
        env: Mapping[str, str] | None = None,
        cleanup_timeout_s: float = 120.0,
    ) -> None:
        self.command = list(command)
        self.directory = directory
        self.env = dict(env) if env is not None else None
        self.cleanup_timeout_s = cleanup_timeout_s

    def log_path(self, job: Job) -> Path:
        return self.directory / "logs" / log_name(job.name)

    def result_path(self, launch_id: str) -> Path:
        return self.directory / "runs" / f"{launch_id}.json"

    def _open_log(self, job: Job, what: str) -> tuple[int, int]:
        """(descriptor, offset where this launch's output starts)."""
        path = self.log_path(job)
        for folder in (path.parent, self.directory / "runs"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > LOG_LIMIT:
                os.replace(path, path.with_name(path.name + ".1"))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        os.write(fd, f"--- {now} {what} {job.name}\n".encode())
        return fd, os.fstat(fd).st_size

    def launch(self, job: Job, launch_id: str) -> ChildJob:
        result = self.result_path(launch_id)
        fd, offset = self._open_log(job, f"launch {launch_id}")
        try:
            popen = subprocess.Popen(
                [*self.command, "--job", job.name, "--result", str(result)],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=self.env,
                start_new_session=True,  # signalled by the scheduler, never by a terminal's ^C
                close_fds=True,
            )
        finally:
            os.close(fd)
        return ChildJob(result, self.log_path(job), offset, popen=popen)

    def adopt(self, job: Job, current: Current) -> ChildJob | None:
        if current.pid is None or process_start(current.pid) != current.pid_start:
            return None
        offset = self.log_path(job).stat().st_size if self.log_path(job).exists() else 0
        return ChildJob(
            self.result_path(current.launch), self.log_path(job), offset, adopted=current
        )

    def after_kill(self, job: Job) -> None:
        """`--release-locks`: the runner opens the job's repositories and removes the locks
        of processes that are gone (the killed child's), sealing their runs as interrupted."""
        fd, _ = self._open_log(job, "release-locks after kill")
        try:
            subprocess.run(
                [*self.command, "--job", job.name, "--release-locks"],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=self.env,
                timeout=self.cleanup_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise OSError(f"removing the locks took more than {exc.timeout:g}s") from None
        finally:
            os.close(fd)
