"""State shared by all commands: global options, settings, and opening the repository."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from medvault.backends import open_backend
from medvault.config import RepositorySettings, Settings, load_settings, resolve_repository
from medvault.credentials import CredentialOptions, get_credential
from medvault.repository.repo import Repository

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class CliContext:
    repo_option: str | None = None
    config_option: str | None = None
    credentials: CredentialOptions = field(default_factory=CredentialOptions)
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_option)
        return self._settings

    def repository_target(self, source: str | None = None) -> tuple[str, RepositorySettings | None]:
        return resolve_repository(self.settings, self.repo_option, source)

    def open(self, source: str | None = None) -> Repository:
        url, repo_settings = self.repository_target(source)
        backend = open_backend(url)
        # Say "no repository here" before asking for a passphrase that could not help.
        Repository.probe(backend)
        return Repository.open(backend, get_credential(self.credentials, repo_settings))


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
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
