"""`medvault wal-push`, `wal-fetch` and `wal-status`: PostgreSQL's archive_command and
restore_command, and the health of the archive.

The work is in medvault.service.wal; this module builds the session, calls it, prints and
picks the exit code. wal-push and wal-fetch run once per WAL file, so they must start fast:
cli/entry.py runs them without Typer or pydantic, and this module imports nothing heavy at
module level (Typer only inside `register`, the service inside each command).

Exit codes (docs/operations.md):
  wal-push    0 archived durably, or an identical copy was there already; otherwise the
              error's code, e.g. 18 (a different file of that name, or another cluster's
              segment). PostgreSQL keeps the file and retries.
  wal-fetch   0 restored; 1 not in the archive (recovery ends there, as PostgreSQL expects);
              126 for everything else (repository unreachable, object damaged, wrong key,
              bad configuration or arguments): PostgreSQL aborts recovery on an exit code
              above 125 instead of ending it early at the wrong point.
  wal-status  0 healthy; 19 a gap in a timeline, a missing history file, or an archiver
              whose last attempt failed; 15 the server could not be asked.
"""

# No `from __future__ import annotations` here: Typer reads the annotations of the commands
# defined inside register(), where `typer` is a local name.
import os
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, NamedTuple

from medvault.errors import (
    EXIT_NOT_ARCHIVED,
    MedvaultError,
    SourceUnavailable,
    WalMissing,
    exit_code_for,
)

if TYPE_CHECKING:
    import typer

    from medvault.config import RepositorySettings
    from medvault.credentials import ShellCredentials
    from medvault.repository.keys import Credential
    from medvault.service.session import Session
    from medvault.service.walstatus import WalStatusReport


def warn(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class GlobalOptions(NamedTuple):
    """The root options of `medvault`, however they were parsed (a NamedTuple: built on
    every wal-push, where a frozen dataclass's class costs ten times more)."""

    config: str | None = None
    repo: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    key_file: str | None = None


class _ShellCredentials:
    """medvault.credentials' ShellCredentials, imported when a repository is first opened (it
    brings the key machinery): an asynchronous push acknowledged from its marker opens none."""

    def __init__(self, options: GlobalOptions) -> None:
        self.options = options

    def _shell(self) -> "ShellCredentials":
        from medvault.credentials import CredentialOptions, ShellCredentials

        given = self.options
        return ShellCredentials(
            CredentialOptions(given.password_file, given.password_command, given.key_file)
        )

    def primary(self, settings: "RepositorySettings | None") -> "Credential":
        return self._shell().primary(settings)

    def other(self, settings: "RepositorySettings | None") -> "Credential":
        return self._shell().other(settings)


def _repository(options: GlobalOptions) -> str | None:
    """--repo, else MEDVAULT_REPOSITORY (as Typer reads it for the other commands)."""
    return options.repo or os.environ.get("MEDVAULT_REPOSITORY")


def session_of(options: GlobalOptions, *, every_run: bool = False) -> "Session":
    """The session wal-push and wal-fetch run in, on either path (cli/entry.py or Typer).
    Their failures are sealed into the audit trail and spooled for the catalog; successful
    pushes are counted per hour, successful fetches not recorded. `every_run`: wal-status,
    whose runs are kept like any command's."""
    from medvault.service.audit import AuditObserver
    from medvault.service.recording import SpoolObserver
    from medvault.service.runs import Caller
    from medvault.service.session import Session
    from medvault.statedir import default_state_dir

    session = Session(
        credentials=_ShellCredentials(options),
        caller=Caller.this_process("cli"),
        repository=_repository(options),
        config=options.config,
        state_dir=default_state_dir(os.environ, os.getuid()),
    )
    session.observers += [
        AuditObserver(session),
        SpoolObserver(session, only_failures=not every_run),
    ]
    return session


def _print_warnings(session: "Session") -> None:
    for message in session.warnings():
        warn(f"medvault: warning: {message}")


# -- the commands ----------------------------------------------------------------------------


def run_push(options: GlobalOptions, source: str, path: str, *, force_async: bool) -> None:
    """archive_command: returns once the file is durable; raises MedvaultError otherwise."""
    from medvault.service.wal import PushOptions, acknowledged, push
    from medvault.walconfig import light_wal_settings

    asked = PushOptions(source, path, force_async)
    # Acknowledged from the spool (most calls with wal_async) before a session is made.
    light = light_wal_settings(options.config, _repository(options), source)
    if light is not None and acknowledged(light, asked):
        return
    session = session_of(options)
    result = push(session, asked, wal=light)
    if result.from_spool:
        return
    _print_warnings(session)
    if result.not_replicated is not None:
        warn(f"medvault: warning: {result.not_replicated}")


def run_fetch(options: GlobalOptions, source: str, name: str, dest: str) -> int:
    """restore_command: an exit code, never an exception (see the table above)."""
    try:
        from medvault.service.wal import fetch

        session = session_of(options)
        found = fetch(session, source, name, dest).found
    except MedvaultError as exc:
        code = exit_code_for(exc, wal_fetch=True)
        warn(f"medvault: error: {exc} (wal-fetch exits {code}: recovery stops)")
        return code
    except Exception as exc:
        code = exit_code_for(exc, wal_fetch=True)
        warn(
            f"medvault: internal error: {type(exc).__name__}: {exc} "
            f"(wal-fetch exits {code}: recovery stops)"
        )
        return code
    _print_warnings(session)
    if not found:
        # The normal end of every archive recovery, polled every few seconds by a standby:
        # said only to a person at a terminal, not into the server log.
        if sys.stderr.isatty():
            warn(f"medvault: {name} is not in the WAL archive of source {source}")
        return EXIT_NOT_ARCHIVED
    return 0


def fast_push(options: GlobalOptions, source: str, path: str, force_async: bool) -> int:
    """wal-push for cli/entry.py: the same messages and exit codes as cli/main.py."""
    try:
        run_push(options, source, path, force_async=force_async)
    except MedvaultError as exc:
        warn(f"medvault: error: {exc}")
        return exit_code_for(exc)
    except Exception as exc:
        if os.environ.get("MEDVAULT_DEBUG"):
            import traceback

            traceback.print_exc()
        warn(
            f"medvault: internal error: {type(exc).__name__}: {exc} "
            "(set MEDVAULT_DEBUG=1 for details)"
        )
        return exit_code_for(exc)
    return 0


def status_exit_code(report: "WalStatusReport") -> int:
    """19 for a gap, a missing history file or a failing archiver; 15 when the server could
    not be asked and nothing else is wrong."""
    if any(p != report.archiver_error for p in report.problems):
        return WalMissing.exit_code
    if report.archiver_error is not None:
        return SourceUnavailable.exit_code
    return 0


def _print_status(report: "WalStatusReport") -> None:
    print(f"source {report.source}: cluster {report.system_identifier or '(nothing archived)'}")
    if report.archiver is not None:
        a = report.archiver
        print(
            f"archiver: {a['archived_count']} archived, last {a['last_archived_wal'] or '-'} "
            f"at {a['last_archived_time'] or '-'}; {a['failed_count']} failed, last "
            f"{a['last_failed_wal'] or '-'} at {a['last_failed_time'] or '-'}"
        )
    if report.ready is not None:
        print(f"ready to archive: {report.ready} file(s)")
    if report.spooled:
        print(f"pushed ahead, awaiting acknowledgement: {report.spooled}")
    for t in report.timelines:
        print(
            f"timeline {t.timeline}: {t.count} segment(s) {t.first or '-'} .. "
            f"{t.last or '-'}" + (", history file" if t.history else "")
        )
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    if not report.problems:
        print("healthy")


def register(app: "typer.Typer") -> None:
    # Typer is imported here, not at module level: cli/entry.py runs wal-push and wal-fetch
    # through this module without it.
    import typer

    from medvault.cli.context import CliContext, obtain, print_json

    def options_of(cli: CliContext) -> GlobalOptions:
        creds = cli.credentials
        return GlobalOptions(
            cli.config_option,
            cli.repo_option,
            creds.password_file,
            creds.password_command,
            creds.key_file,
        )

    @app.command("wal-push")
    def wal_push(
        ctx: typer.Context,
        source: str = typer.Argument(..., help="The PostgreSQL source in medvault.toml."),
        path: str = typer.Argument(..., help="The WAL file (archive_command's %p)."),
        force_async: bool = typer.Option(
            False, "--async", help="Push every ready file in one batch (or wal_async = true)."
        ),
    ) -> None:
        """Archive one WAL file: archive_command = 'medvault wal-push SOURCE %p'."""
        run_push(options_of(obtain(ctx)), source, path, force_async=force_async)

    @app.command("wal-fetch")
    def wal_fetch(
        ctx: typer.Context,
        source: str = typer.Argument(..., help="The PostgreSQL source in medvault.toml."),
        name: str = typer.Argument(..., help="The WAL file name (restore_command's %f)."),
        dest: str = typer.Argument(..., help="Where to write it (restore_command's %p)."),
    ) -> None:
        """Restore one WAL file: restore_command = 'medvault wal-fetch SOURCE %f %p'.
        Exits 1 when it is not archived, 126 when the archive cannot be read."""
        code = run_fetch(options_of(obtain(ctx)), source, name, dest)
        if code:
            raise typer.Exit(code)

    @app.command("wal-status")
    def wal_status(
        ctx: typer.Context,
        source: str = typer.Argument(..., help="The PostgreSQL source in medvault.toml."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Archiver health and the archive's segments per timeline, with any gaps.
        Exits 19 on a gap or a failing archiver, 15 when the server cannot be asked."""
        from medvault.service.walstatus import wal_status

        session = session_of(options_of(obtain(ctx)), every_run=True)
        report = wal_status(session, source)
        _print_warnings(session)
        code = status_exit_code(report)
        if as_json:
            print_json({**asdict(report), "healthy": code == 0})
        else:
            _print_status(report)
        if code:
            raise typer.Exit(code)
