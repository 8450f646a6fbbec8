"""State shared by all commands: global options, settings, and opening the repository.

Heavy modules (pydantic, rich's progress, the repository engine) are imported only by the
commands that use them, so a command starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer

from medvault.configfile import find_config
from medvault.credentials import CredentialOptions

if TYPE_CHECKING:
    from medvault.config import RepositorySettings, Settings
    from medvault.repository.repo import Repository


def warn(message: str) -> None:
    """One line on stderr, never wrapped: log collectors and DBAs grep for it."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


@dataclass
class CliContext:
    repo_option: str | None = None
    config_option: str | None = None
    credentials: CredentialOptions = field(default_factory=CredentialOptions)
    _settings: Settings | None = None
    _opened: list[Repository] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from medvault.config import load_settings

            self._settings = load_settings(self.config_option)
        return self._settings

    def configured_sources(self) -> set[str]:
        if find_config(self.config_option) is None:
            return set()
        return set(self.settings.source)

    def repository_target(
        self, source: str | None = None, selector: str | None = None
    ) -> tuple[str, RepositorySettings | None]:
        """URL and settings of the repository chosen by `selector` (a name from
        medvault.toml or a path/URL), else by --repo, the source, or the only one configured."""
        chosen = selector or self.repo_option
        if chosen and find_config(self.config_option) is None:
            return chosen, None
        from medvault.config import resolve_repository

        return resolve_repository(self.settings, chosen, source)

    def open(
        self,
        source: str | None = None,
        selector: str | None = None,
        *,
        other: bool = False,
        sharing: Repository | None = None,
    ) -> Repository:
        """Open the repository; `other` marks a second one (copy's --from, init's
        --copy-keys-from), whose credential comes first from its own section. With `sharing`,
        an open repository whose keys this one may share: then no credential is asked."""
        from medvault.backends import open_backend
        from medvault.credentials import get_credential, get_other_credential
        from medvault.repository.repo import Repository

        url, repo_settings = self.repository_target(source, selector)
        backend = open_backend(url, repo_settings)
        # Say "no repository here" before asking for a passphrase that could not help.
        probed = Repository.probe(backend)
        repo = (
            Repository.open_sharing(backend, sharing.master, probed)
            if sharing is not None
            else None
        )
        if repo is None:
            if other:
                credential = get_other_credential(repo_settings)
            else:
                credential = get_credential(self.credentials, repo_settings)
            repo = Repository.open(backend, credential, probed)
        repo.retention_period = self.retention_period(source)
        secondary = repo_settings.secondary if repo_settings is not None else None
        if secondary is not None:
            name = secondary
            repo.fallback = lambda: self.open(source, selector=name, other=True, sharing=repo)
            repo.fallback_name = secondary
        self._opened.append(repo)
        return repo

    def last_opened(self) -> Repository:
        return self._opened[-1]

    def retention_period(self, source: str | None) -> dt.timedelta | None:
        """How long what this command writes must stay undeletable (Object Lock)."""
        if find_config(self.config_option) is None:
            return None
        return self.settings.retention_period(source)

    def print_warnings(self) -> None:
        for repo in self._opened:
            summary = repo.failover_summary()
            for message in dict.fromkeys([*repo.warnings, *([summary] if summary else [])]):
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
