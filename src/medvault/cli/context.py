"""State shared by all commands: the root options, and the Session built from them.

Heavy modules (pydantic, rich's progress, the repository engine) are imported only by the
commands that use them, so a command starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer

from medvault.credentials import CredentialOptions

if TYPE_CHECKING:
    from medvault.service.session import Session


def warn(message: str) -> None:
    """One line on stderr, never wrapped: log collectors and DBAs grep for it."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


@dataclass
class CliContext:
    """The CLI's options, and the session built from them once a command first needs it
    (options given after the subcommand are set before that)."""

    repo_option: str | None = None
    config_option: str | None = None
    credentials: CredentialOptions = field(default_factory=CredentialOptions)
    # False: no passphrase prompt (runs and stats open repositories only to catch up).
    interactive: bool = True
    # Who runs the operations, in run records: "cli", or "serve" for the long-running service.
    shell: str = "cli"
    # A long-lived shell (serve) keeps each repository's master key after its first opening.
    keep_keys: bool = False
    _session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            from medvault.credentials import ShellCredentials
            from medvault.service.audit import AuditObserver
            from medvault.service.recording import SpoolObserver
            from medvault.service.runs import Caller
            from medvault.service.session import Session
            from medvault.statedir import default_state_dir

            session = Session(
                credentials=ShellCredentials(self.credentials, self.interactive),
                caller=Caller.this_process(self.shell),
                repository=self.repo_option,
                config=self.config_option,
                state_dir=default_state_dir(os.environ, os.getuid()),
                keep_keys=self.keep_keys,
            )
            # Every run, whatever it did, is sealed into the audit trail, and spooled for
            # the catalog (`medvault runs`).
            session.observers += [AuditObserver(session), SpoolObserver(session)]
            self._session = session
        return self._session

    def print_warnings(self) -> None:
        if self._session is None:
            return
        for message in self._session.warnings():
            warn(f"medvault: warning: {message}")


def obtain(ctx: typer.Context) -> CliContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, CliContext)
    return obj


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; a no-op callback otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
