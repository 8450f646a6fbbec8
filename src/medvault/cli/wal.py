"""`medvault wal-push`, `wal-fetch` and `wal-status`: PostgreSQL's archive_command and
restore_command, and the health of the archive.

wal-push and wal-fetch run once per WAL file, so they must start fast: cli/entry.py runs them
without Typer or pydantic, and this module imports nothing heavy at module level (Typer only
inside `register`). They read only their own source's and repository's sections of
medvault.toml with tomllib; anything unusual there falls back to the full, validated settings
(medvault.config), which also produce the error messages.

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
import re
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

from medvault.errors import (
    EXIT_NOT_ARCHIVED,
    MedvaultError,
    SourceUnavailable,
    UsageError,
    WalMissing,
    exit_code_for,
)
from medvault.postgres.lsn import DEFAULT_SEGMENT_SIZE, check_name, is_archivable
from medvault.sources.postgres.wal import fetch_to, push_file

if TYPE_CHECKING:
    import datetime as dt

    import typer

    from medvault.config import RepositorySettings, Settings
    from medvault.repository.repo import Repository
    from medvault.repository.wal import WalArchive

# The keys medvault.config's models accept (tests/test_pg_wal.py keeps them in step).
REPOSITORY_KEYS = frozenset(
    {
        "url",
        "password_file",
        "password_command",
        "key_file",
        "append_only",
        "endpoint",
        "region",
        "path_style",
        "storage_class",
        "sse",
        "sse_kms_key_id",
        "profile",
        "access_key_id",
        "secret_access_key",
        "plaintext_credentials",
        "read_timeout_s",
        "secondary",
        "replicate",
    }
)
# Those the light path handles itself: a plain local repository and how to open its key.
LIGHT_REPOSITORY_KEYS = frozenset({"url", "password_file", "password_command", "key_file"})
POSTGRES_SOURCE_KEYS = frozenset(
    {
        "kind",
        "retention",
        "pitr_window",
        "dsn",
        "pgdata",
        "repository",
        "tags",
        "tier",
        "pg_bin",
        "wal_async",
        "wal_spool",
        "archive_timeout_s",
        "checkpoint",
        "drill",
    }
)
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def warn(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class GlobalOptions:
    """The root options of `medvault`, however they were parsed."""

    config: str | None = None
    repo: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class RepoKeys:
    """The credential keys of a [repository.NAME] section, read without pydantic."""

    key_file: str | None = None
    password_file: str | None = None
    password_command: str | None = None


@dataclass(frozen=True)
class WalSettings:
    source: str
    url: str
    repo_keys: "RepoKeys | RepositorySettings | None"
    wal_async: bool = False
    wal_spool: str | None = None
    dsn: str | None = None
    pgdata: str | None = None
    retention: "dt.timedelta | None" = None  # Object Lock period (the source's tier floor)
    # The repository's secondary: read when the primary lacks a file or holds it damaged,
    # and sent each archived file when `replicate = true`.
    secondary_name: str = ""
    secondary_url: str | None = None
    secondary: "RepositorySettings | None" = None
    replicate: bool = False


# -- settings ------------------------------------------------------------------------------


def _optional_str(section: dict[str, Any], key: str) -> str | None:
    value = section.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(key)
    return value


def _light_settings(options: GlobalOptions, source: str) -> WalSettings | None:
    """The few keys wal-push needs, with tomllib alone; None when anything is unusual."""
    import tomllib

    from medvault.configfile import find_config

    path = find_config(options.config)
    if path is None or not _NAME_PATTERN.match(source):
        return None
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        section = raw["source"][source]
        repos = raw.get("repository", {})
        if (
            not isinstance(section, dict)
            or not isinstance(repos, dict)
            or not set(section) <= POSTGRES_SOURCE_KEYS
            or section.get("kind") != "postgres"
            or not isinstance(section.get("dsn"), str)
            or not isinstance(section.get("wal_async", False), bool)
        ):
            return None
        found = {
            "source": source,
            "wal_async": section.get("wal_async", False),
            "wal_spool": _optional_str(section, "wal_spool"),
            "dsn": section["dsn"],
            "pgdata": _optional_str(section, "pgdata"),
        }
        chosen = options.repo or os.environ.get("MEDVAULT_REPOSITORY")
        if chosen and chosen not in repos:
            if "://" in chosen:
                return None
            return WalSettings(url=chosen, repo_keys=None, **found)
        name = chosen or _optional_str(section, "repository")
        if name is None:
            if len(repos) != 1:
                return None
            name = next(iter(repos))
        repo = repos[name]
        if not isinstance(repo, dict) or not set(repo) <= LIGHT_REPOSITORY_KEYS:
            return None
        url = repo.get("url")
        if not isinstance(url, str) or not url or "://" in url:
            return None  # remote stores may lock objects: the full path knows the tiers
        keys = RepoKeys(
            key_file=_optional_str(repo, "key_file"),
            password_file=_optional_str(repo, "password_file"),
            password_command=_optional_str(repo, "password_command"),
        )
        return WalSettings(url=url, repo_keys=keys, **found)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return None


def _full_settings(options: GlobalOptions, source: str) -> WalSettings:
    """Through medvault.config: full validation, and its messages when something is wrong."""
    from medvault.config import PostgresSourceSettings, load_settings, resolve_repository
    from medvault.configfile import find_config

    path = find_config(options.config)
    settings = load_settings(options.config)
    if path is None:
        chosen = options.repo or os.environ.get("MEDVAULT_REPOSITORY")
        if not chosen:
            raise UsageError(
                f"no medvault.toml found for source {source}: pass --config, or --repo PATH"
            )
        return WalSettings(source=source, url=chosen, repo_keys=None)
    section = settings.source.get(source)
    if section is None and (options.repo or os.environ.get("MEDVAULT_REPOSITORY")):
        # The source name only names the archive's folder: with the repository given
        # outright (a restored server's restore_command), no section is needed.
        url, repo_settings = resolve_repository(settings, options.repo, source)
        return WalSettings(
            source=source,
            url=url,
            repo_keys=repo_settings,
            retention=settings.retention_period(None),
        )
    if section is None:
        raise UsageError(
            f'{path} has no source {source}: add a [source.{source}] section with kind = "postgres"'
        )
    if not isinstance(section, PostgresSourceSettings):
        raise UsageError(f'source {source} is not a PostgreSQL source (kind = "{section.kind}")')
    url, repo_settings = resolve_repository(settings, options.repo, source)
    return WalSettings(
        source=source,
        url=url,
        repo_keys=repo_settings,
        wal_async=section.wal_async,
        wal_spool=section.wal_spool,
        dsn=section.dsn,
        pgdata=section.pgdata,
        retention=settings.retention_period(source),
        **_secondary(settings, repo_settings),
    )


def _secondary(settings: "Settings", primary: "RepositorySettings | None") -> dict[str, Any]:
    """The repository's secondary: read from on failover, written to with replicate."""
    if primary is None or primary.secondary is None:
        return {}
    secondary = settings.repository[primary.secondary]
    return {
        "secondary_name": primary.secondary,
        "secondary_url": secondary.url,
        "secondary": secondary,
        "replicate": primary.replicate,
    }


def wal_settings(options: GlobalOptions, source: str) -> WalSettings:
    return _light_settings(options, source) or _full_settings(options, source)


def open_archive(
    settings: WalSettings, options: GlobalOptions, *, compress_threads: int = -1
) -> "WalArchive":
    from medvault.backends import open_backend
    from medvault.credentials import CredentialOptions, get_credential
    from medvault.repository.repo import Repository
    from medvault.repository.wal import WalArchive

    # RepoKeys come from the light path, which only takes plain local repositories.
    full = None if isinstance(settings.repo_keys, RepoKeys) else settings.repo_keys
    backend = open_backend(settings.url, full)
    # Say "no repository here" before asking for a passphrase that could not help.
    Repository.probe(backend)
    credentials = CredentialOptions(
        options.password_file, options.password_command, options.key_file
    )
    # get_credential reads only key_file, password_file and password_command, which RepoKeys
    # carries under the same names.
    repo_settings = cast("RepositorySettings | None", settings.repo_keys)
    repo = Repository.open(backend, get_credential(credentials, repo_settings))
    repo.retention_period = settings.retention
    if settings.secondary_url is not None:
        repo.fallback = lambda: _open_secondary(settings)
        repo.fallback_name = settings.secondary_name
    return WalArchive(repo, settings.source, compress_threads=compress_threads)


def _open_secondary(settings: WalSettings) -> "Repository":
    from medvault.backends import open_backend
    from medvault.credentials import get_other_credential
    from medvault.repository.repo import Repository

    assert settings.secondary_url is not None
    backend = open_backend(settings.secondary_url, settings.secondary)
    return Repository.open(backend, get_other_credential(settings.secondary))


def _print_repo_warnings(archive: "WalArchive") -> None:
    summary = archive.repo.failover_summary()
    for message in dict.fromkeys([*archive.repo.warnings, *([summary] if summary else [])]):
        warn(f"medvault: warning: {message}")


# -- the commands ----------------------------------------------------------------------------


def run_push(options: GlobalOptions, source: str, path: str, *, force_async: bool) -> None:
    """archive_command: returns once the file is durable; raises MedvaultError otherwise."""
    name = check_name(os.path.basename(path))
    settings = wal_settings(options, source)
    if force_async or settings.wal_async:
        from medvault.sources.postgres.walspool import Spool, push_ready, ready_files

        spool = Spool(settings.wal_spool or Spool.default_path(path), source, settings.url)
        if spool.acknowledge(name, path):
            return
        # Several files go in parallel, each compressed on one thread; a lone one uses all.
        alone = len(ready_files(os.path.dirname(os.path.abspath(path)))) <= 1
        archive = open_archive(settings, options, compress_threads=-1 if alone else 0)
        pushed = push_ready(archive, path, spool, warn=warn).pushed
    else:
        archive = open_archive(settings, options)
        push_file(archive, path)
        pushed = [name]
    _print_repo_warnings(archive)
    _replicate(settings, archive, pushed)


def _replicate(settings: WalSettings, archive: "WalArchive", names: list[str]) -> None:
    """Best effort: the files are safe in the primary, and PostgreSQL must not be held up
    (its WAL would pile up) while the second site is unreachable."""
    if settings.secondary_url is None or not settings.replicate or not names:
        return
    from medvault.repository.copy import RepositoryCopier

    try:
        target = _open_secondary(settings)
        target.retention_period = settings.retention
        RepositoryCopier(archive.repo, target).copy_wal_files(settings.source, names)
    except MedvaultError as exc:
        warn(
            f"medvault: warning: {', '.join(names)} archived in the primary but not replicated "
            f"to {settings.secondary_url}: {exc}; `medvault copy` catches the secondary up"
        )


def run_fetch(options: GlobalOptions, source: str, name: str, dest: str) -> int:
    """restore_command: an exit code, never an exception (see the table above)."""
    try:
        check_name(name)
        archive = open_archive(wal_settings(options, source), options)
        found = fetch_to(archive, name, dest)
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
    _print_repo_warnings(archive)
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


@dataclass
class StatusReport:
    source: str
    system_identifier: str | None
    segment_size: int
    archiver: dict[str, Any] | None
    archiver_error: str | None
    ready: int | None
    spooled: int | None
    timelines: list[dict[str, Any]]
    problems: list[str]

    @property
    def exit_code(self) -> int:
        if any(p != self.archiver_error for p in self.problems):
            return WalMissing.exit_code
        if self.archiver_error is not None:
            return SourceUnavailable.exit_code
        return 0


def status_report(options: GlobalOptions, source: str) -> StatusReport:
    from medvault.sources.postgres.walspool import SPOOL_DIR_NAME, Spool
    from medvault.sources.postgres.walstatus import archiver_stats, ready_count, summarize

    settings = wal_settings(options, source)
    archive = open_archive(settings, options)
    record = archive.cluster()
    segment_size = record.segment_size if record else DEFAULT_SEGMENT_SIZE
    timelines = [asdict(t) for t in summarize(archive, segment_size)]
    archiver, archiver_error = None, None
    if settings.dsn:
        try:
            archiver = archiver_stats(settings.dsn)
        except SourceUnavailable as exc:
            archiver_error = str(exc)
    spool_path = settings.wal_spool or (
        os.path.join(settings.pgdata, "pg_wal", SPOOL_DIR_NAME) if settings.pgdata else None
    )
    problems = []
    for t in timelines:
        if t["missing"]:
            shown = ", ".join(t["missing"][:5]) + (" ..." if len(t["missing"]) > 5 else "")
            problems.append(f"timeline {t['timeline']}: {len(t['missing'])} missing: {shown}")
    if archiver is not None and archiver["failing"]:
        problems.append(
            f"the archiver is failing: {archiver['last_failed_wal']} failed at "
            f"{archiver['last_failed_time']}; see the server log for wal-push's message"
        )
    last = archiver["last_archived_wal"] if archiver is not None else None
    if last is not None and is_archivable(last) and not archive.exists(last):
        problems.append(
            f"the server reports {last} archived but the archive of source {source} lacks it: "
            "does its archive_command name another source or repository?"
        )
    if archiver is not None and archiver["archive_mode"] == "off":
        problems.append("archive_mode is off: no WAL reaches the archive")
    if archiver_error is not None:
        problems.append(archiver_error)
    _print_repo_warnings(archive)
    return StatusReport(
        source=source,
        system_identifier=record.system_identifier if record else None,
        segment_size=segment_size,
        archiver=archiver,
        archiver_error=archiver_error,
        ready=ready_count(settings.pgdata),
        spooled=len(Spool(spool_path, source, settings.url).markers()) if spool_path else None,
        timelines=timelines,
        problems=problems,
    )


def _print_status(report: StatusReport) -> None:
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
            f"timeline {t['timeline']}: {t['count']} segment(s) {t['first'] or '-'} .. "
            f"{t['last'] or '-'}" + (", history file" if t["history"] else "")
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
        report = status_report(options_of(obtain(ctx)), source)
        if as_json:
            print_json({**asdict(report), "healthy": report.exit_code == 0})
        else:
            _print_status(report)
        if report.exit_code:
            raise typer.Exit(report.exit_code)
