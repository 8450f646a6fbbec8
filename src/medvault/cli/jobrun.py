"""The job runner: one scheduled job in a process of its own.

    python -m medvault.cli.jobrun --config FILE --job NAME [--result FILE] [--state-dir DIR]
    python -m medvault.cli.jobrun --config FILE --job NAME --release-locks

A shell like the CLI: it builds a Session as cli/context.py does (the caller's shell is
"scheduler", credentials never prompt, the audit trail and the catalog's spool observe every
run), calls service.jobs.run_job and ends with the CLI's exit code for the outcome. `--result`
names a JSON file it keeps up to date for the scheduler: the runs it started (ids as soon as
they start), then its status, exit code and error line. SIGINT, and SIGTERM (a service
manager stopping everything), interrupt the job as Ctrl-C does a command: the run is recorded
interrupted and its locks are released. `--release-locks` removes, after the scheduler
killed a job, the locks its process left in the job's repositories.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from medvault.service.runs import Run, RunRecord


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class ResultFile:
    """The runs a job started and how it ended, rewritten whole (temporary file + rename)
    at every change: the scheduler reads it while the job runs."""

    def __init__(self, path: Path | None, job: str) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"job": job, "pid": os.getpid(), "status": "running", "runs": []}
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(json.dumps(self.doc), encoding="utf-8")
        os.replace(temporary, self.path)

    def run_started(self, run: Run) -> None:
        self.doc["runs"].append(
            {"run_id": run.run_id, "operation": run.operation, "status": "running"}
        )
        self.write()

    def run_ended(self, record: RunRecord) -> None:
        for entry in self.doc["runs"]:
            if entry["run_id"] == record.run_id:
                entry.update(status=record.status, error=record.error)
        self.write()

    def last_status(self) -> str | None:
        ended = [r["status"] for r in self.doc["runs"] if r["status"] != "running"]
        return ended[-1] if ended else None

    def finish(self, status: str, exit_code: int, error: str | None) -> None:
        self.doc.update(status=status, exit_code=exit_code, error=error)
        self.write()


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from medvault.cli.entry import forbid_core_dumps

    forbid_core_dumps()
    # Set explicitly: a child of a process that ignores SIGINT would inherit the ignoring.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(prog="medvault-jobrun", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--result", type=Path)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--release-locks", action="store_true")
    args = parser.parse_args(argv)
    result = ResultFile(args.result, args.job)
    try:
        code, status, error = _run(args, result)
    except KeyboardInterrupt:
        _say(f"medvault: job {args.job} interrupted; earlier snapshots are intact")
        code, status, error = 130, "interrupted", "interrupted"
    result.finish(status, code, error)
    return code


def _run(args: argparse.Namespace, result: ResultFile) -> tuple[int, str, str | None]:
    from medvault.errors import MedvaultError, exit_code_for, first_line

    session = None
    try:
        session = _session(args, result)
        from medvault.service.jobs import find_job, release_locks, run_job

        job = find_job(session, args.job)
        if args.release_locks:
            removed = release_locks(session, job)
            print(f"medvault: job {job.name}: removed {len(removed)} lock(s) of ended processes")
            return 0, "ok", None
        done = run_job(session, job)
        print(f"medvault: job {job.name}: {done.status}: {done.summary}")
        return done.exit_code, done.status, None if done.status == "ok" else done.summary
    except MedvaultError as exc:
        _say(f"medvault: error: {exc}")
        return exit_code_for(exc), result.last_status() or "failed", first_line(exc)
    except Exception as exc:
        line = f"internal error: {type(exc).__name__}: {first_line(exc)}"
        _say(f"medvault: {line}")
        return exit_code_for(exc), "failed", line
    finally:
        for message in session.warnings() if session is not None else ():
            _say(f"medvault: warning: {message}")


def _session(args: argparse.Namespace, result: ResultFile) -> Any:
    from medvault.credentials import CredentialOptions, ShellCredentials
    from medvault.service.audit import AuditObserver
    from medvault.service.recording import SpoolObserver
    from medvault.service.runs import Caller
    from medvault.service.session import Session
    from medvault.statedir import default_state_dir

    session = Session(
        credentials=ShellCredentials(CredentialOptions(), interactive=False),
        caller=Caller.this_process("scheduler"),
        config=args.config,
        state_dir=args.state_dir or default_state_dir(os.environ, os.getuid()),
    )
    session.observers += [AuditObserver(session), SpoolObserver(session), result]
    session.run_started.append(result.run_started)
    return session


if __name__ == "__main__":
    sys.exit(main())
