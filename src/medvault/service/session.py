"""A session: what every operation needs, whichever shell asked for it.

The shell (the CLI today; the HTTP API and the scheduler next) builds one `Session` from its
own options: which configuration, which repository, where credentials come from, who is
asking, and who wants to hear about runs. Operations open repositories only through it, so
failover to the secondary, retention periods (Object Lock) and credentials are decided in
one place. Nothing here prints, prompts, or reads argv or the environment: a shell that
prompts does so inside the `CredentialSource` it hands in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from medvault.configfile import find_config
from medvault.errors import MedvaultError
from medvault.service.runs import Caller, Run, RunObserver, Status, running

if TYPE_CHECKING:
    from medvault.config import RepositorySettings, Settings
    from medvault.repository.keys import Credential, MasterKey
    from medvault.repository.records import AuditHead
    from medvault.repository.repo import Repository


def _local_form(url: str) -> str:
    """A local repository's location as its backend names it (an absolute path)."""
    path = url.removeprefix("file://")
    return str(Path(path).absolute()) if "://" not in path else url


class CredentialSource(Protocol):
    """Where a repository's passphrase or key file comes from: the shell's business."""

    def primary(self, settings: RepositorySettings | None) -> Credential:
        """For the repository an operation works on."""
        ...

    def other(self, settings: RepositorySettings | None) -> Credential:
        """For a second repository in one operation (copy's source, a secondary)."""
        ...


class RepositoryTarget(NamedTuple):
    """A repository chosen (Session.target), with what opening it needs. A NamedTuple rather
    than a frozen dataclass: its class is built on every wal-push, at a tenth of the cost."""

    url: str
    settings: RepositorySettings | None = None  # its [repository.NAME], when named there
    retention: dt.timedelta | None = None  # how long what is written stays undeletable
    secondary: str | None = None  # the [repository.NAME] reads fail over to
    # Where the credential is configured when `settings` was not loaded: the WAL path reads
    # key_file, password_file and password_command without pydantic (medvault.walconfig).
    credential_keys: RepositorySettings | None = None


class Session:
    """What one shell's request runs with. A plain class, not a dataclass: wal-push builds one
    for every segment, and defining a dataclass costs a millisecond on import."""

    def __init__(
        self,
        credentials: CredentialSource,
        caller: Caller,
        repository: str | None = None,  # a name from medvault.toml, or a path/URL
        config: str | None = None,  # medvault.toml to use (else the usual places)
        observers: list[RunObserver] | None = None,
        # This host's state of medvault (catalog, records waiting for a repository); None:
        # keep none (statedir.py says where the shells put it).
        state_dir: Path | None = None,
        # A long-lived shell (serve) opening the same repositories every minute: keep each
        # one's master key after the first opening, so later ones run no key derivation.
        keep_keys: bool = False,
    ) -> None:
        self.credentials = credentials
        self.caller = caller
        self.repository = repository
        self.config = config
        self.observers: list[RunObserver] = list(observers or [])
        self.state_dir = state_dir
        # Damage and notes met on the way that did not stop an operation: the shell shows
        # them.
        self.notes: list[str] = []
        self._settings: Settings | None = None
        self._opened: list[Repository] = []
        self._kept_keys: dict[str, MasterKey] | None = {} if keep_keys else None
        self._runs: list[str] = []  # ids of the runs under way, innermost last
        # Called with each run as it starts (the scheduler's job runner reports run ids
        # while the job still runs); a hook that fails costs a note, never the run.
        self.run_started: list[Callable[[Run], None]] = []

    # -- configuration ---------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return find_config(self.config) is not None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from medvault.config import load_settings

            self._settings = load_settings(self.config)
        return self._settings

    def configured_sources(self) -> set[str]:
        return set(self.settings.source) if self.configured else set()

    def repository_target(
        self, source: str | None = None, selector: str | None = None
    ) -> tuple[str, RepositorySettings | None]:
        """URL and settings of the repository chosen by `selector` (a name from
        medvault.toml or a path/URL), else the session's, the source's, or the only one
        configured."""
        chosen = selector or self.repository
        if chosen and not self.configured:
            return chosen, None
        from medvault.config import resolve_repository

        return resolve_repository(self.settings, chosen, source)

    def retention_period(self, source: str | None) -> dt.timedelta | None:
        """How long what an operation writes must stay undeletable (Object Lock)."""
        return self.settings.retention_period(source) if self.configured else None

    # -- repositories ----------------------------------------------------------------------

    def target(self, source: str | None = None, selector: str | None = None) -> RepositoryTarget:
        """The repository chosen as repository_target says, with its retention period and
        its secondary."""
        url, repo_settings = self.repository_target(source, selector)
        return RepositoryTarget(
            url,
            repo_settings,
            retention=self.retention_period(source),
            secondary=repo_settings.secondary if repo_settings is not None else None,
        )

    def open(
        self,
        source: str | None = None,
        selector: str | None = None,
        *,
        other: bool = False,
        sharing: Repository | None = None,
    ) -> Repository:
        """Open a repository (see repository_target); `other` marks a second one, whose
        credential is asked of `credentials.other`. With `sharing`, an open repository whose
        keys this one may share: then no credential is needed. A repository with a
        secondary fails over to it on read."""
        return self.open_target(
            self.target(source, selector), source=source, other=other, sharing=sharing
        )

    def open_target(
        self,
        target: RepositoryTarget,
        *,
        source: str | None = None,
        other: bool = False,
        sharing: Repository | None = None,
    ) -> Repository:
        """Open a repository already chosen: by `target`, or by a shell that resolved it
        without loading the settings (wal-push reads a few keys of medvault.toml itself)."""
        from medvault.backends import open_backend
        from medvault.repository.repo import Repository

        backend = open_backend(target.url, target.settings)
        # "No repository here" before asking for a credential that could not help.
        probed = Repository.probe(backend)
        kept = self._kept_keys.get(target.url) if self._kept_keys is not None else None
        shared = sharing.master if sharing is not None else kept
        # None when the keys differ: a repository re-created under the same URL asks again.
        repo = Repository.open_sharing(backend, shared, probed) if shared is not None else None
        if repo is None:
            about = target.settings if target.settings is not None else target.credential_keys
            credential = self.credentials.other(about) if other else self.credentials.primary(about)
            repo = Repository.open(backend, credential, probed)
        repo.retention_period = target.retention
        if target.secondary is not None:
            name = target.secondary
            repo.fallback = lambda: self.open(source, selector=name, other=True, sharing=repo)
            repo.fallback_name = name
        repo.audit_head = lambda: self._audit_head(repo)
        repo.run_id = self._runs[-1] if self._runs else ""
        if self._kept_keys is not None:
            self._kept_keys[target.url] = repo.master
        self._opened.append(repo)
        return repo

    def release(self) -> list[str]:
        """Close every repository this session opened and hand back (then forget) its
        warnings and notes: what a long-lived shell does after each round of work, so
        neither open stores nor notes pile up. Kept keys stay."""
        said = self.warnings()
        for repo in self._opened:
            repo.close()
        self._opened.clear()
        self.notes.clear()
        return said

    def _audit_head(self, repo: Repository) -> AuditHead | None:
        """The head of this host's audit chain in `repo`, for a snapshot to name; None when
        the session records no audit trail."""
        if not any(getattr(o, "seals_audit", False) for o in self.observers):
            return None
        from medvault.service.audit import audit_log

        return audit_log(self, repo).current_head()

    def last_opened(self) -> Repository:
        return self._opened[-1]

    def close_opened(self, repo: Repository) -> None:
        """Close a repository this session opened, and forget it: a long-running shell that
        gathers facts again and again must not keep every repository it ever opened."""
        with contextlib.suppress(ValueError):
            self._opened.remove(repo)
        repo.close()

    def adopt(self, repo: Repository) -> None:
        """A repository this session made (init) counts as opened by it."""
        self._opened.append(repo)

    def opened_repository(self, url: str) -> Repository | None:
        """The repository at `url` if this session has opened it (the latest such), else
        None: where an observer seals what a run did there."""
        wanted = {url, _local_form(url)}
        for repo in reversed(self._opened):
            if repo.url in wanted:
                return repo
        return None

    def audit_retention(self) -> dt.timedelta | None:
        """How long audit records stay undeletable ([audit] retention, else the longest tier
        floor); None when nothing is configured."""
        return self.settings.audit_retention() if self.configured else None

    def warnings(self) -> list[str]:
        """What the session's repositories met on the way (damage skipped, reads served by
        the secondary), and notes of its own, each once."""
        found = list(self.notes)
        for repo in self._opened:
            summary = repo.failover_summary()
            found += [*repo.warnings, *([summary] if summary else [])]
        return list(dict.fromkeys(found))

    # -- runs ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def run(
        self, operation: str, *, source: str | None = None, repository: str | None = None
    ) -> Iterator[Run]:
        """Run an operation: its record reaches every observer however it ends."""
        with running(
            operation,
            self.caller,
            self.observers,
            self.notes,
            source=source,
            repository=repository,
            audit_fields=self._audit_fields,
        ) as current:
            self._runs.append(current.run_id)
            for hook in self.run_started:
                try:
                    hook(current)
                except Exception as exc:
                    self.notes.append(f"a run-start hook failed: {type(exc).__name__}: {exc}")
            try:
                yield current
            finally:
                self._runs.pop()

    def _audit_fields(self, run: Run, status: Status) -> dict[str, Any]:
        """What the configuration says of the run's data: its classification, compliance
        regimes and retention, and the repository's encryption when it touched one."""
        fields: dict[str, Any] = {}
        if run.repository is not None:
            from medvault.repository.crypto import ENCRYPTION

            fields["encryption"] = ENCRYPTION
        # A successful wal-push on the light path has not loaded the settings (pydantic costs
        # more than the push): it is counted, not recorded one by one.
        light = self._settings is None and status == "ok" and run.operation.startswith("wal-")
        if light or not self.configured:
            return fields
        try:
            settings = self.settings
        except MedvaultError:  # a broken medvault.toml: the run's own error says so
            return fields
        fields["data_classification"] = settings.data_classification(run.source)
        fields["compliance_flags"] = tuple(settings.compliance_flags(run.source))
        fields["retention_policy"] = settings.retention_description(run.source)
        return fields
