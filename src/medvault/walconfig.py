"""What wal-push, wal-fetch and wal-status need of medvault.toml: the one place that knows
its layout for the WAL path.

wal-push runs once per 16 MiB of WAL, and loading the validated settings (pydantic, in
medvault.config) costs more than pushing a segment. So a plain setup (a PostgreSQL source
and a local repository opened by key file or password settings) is read here with tomllib
alone; anything unusual (a remote store, a secondary, a key this reader does not know, a
value of the wrong type) is read through medvault.config, which validates everything and
words the errors. tests/test_pg_wal.py keeps the key lists below in step with its models.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, NamedTuple

from medvault.configfile import find_config
from medvault.errors import UsageError

if TYPE_CHECKING:
    import datetime as dt

    from medvault.config import RepositorySettings, Settings

# The keys medvault.config's models accept.
REPOSITORY_KEYS = frozenset(
    {
        "url",
        "password_file",
        "password_command",
        "key_file",
        "append_only",
        "quota",
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
        "account",
        "credential_file",
        "account_key",
        "sas_token",
    }
)
# Those the light reader handles itself: a plain local repository and how to open its key.
LIGHT_REPOSITORY_KEYS = frozenset({"url", "password_file", "password_command", "key_file"})
POSTGRES_SOURCE_KEYS = frozenset(
    {
        "kind",
        "retention",
        "pitr_window",
        "tables",
        "exclude_tables",
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
        "hooks",
        "restore",
        "classification",
        "compliance",
        "schedule",
        "min_size",
    }
)
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RepoKeys(NamedTuple):
    """The credential keys of a [repository.NAME] section, read without pydantic, under the
    names RepositorySettings gives them (all a credential source reads of a section)."""

    key_file: str | None = None
    password_file: str | None = None
    password_command: str | None = None


class WalSettings(NamedTuple):
    """A source's WAL settings and its repository, resolved. (NamedTuples here: their classes
    are built on every wal-push, where a frozen dataclass's costs ten times more.)"""

    source: str
    url: str
    repository: RepositorySettings | None = None  # its section, when read by medvault.config
    keys: RepoKeys | None = None  # its credential keys, when read here
    wal_async: bool = False
    wal_spool: str | None = None
    dsn: str | None = None
    pgdata: str | None = None
    retention: dt.timedelta | None = None  # Object Lock period (the source's tier floor)
    # The repository's secondary: read when the primary lacks a file or holds it damaged,
    # and sent each archived file when `replicate = true`.
    secondary: str | None = None
    secondary_url: str | None = None
    replicate: bool = False


def _optional_str(section: dict[str, Any], key: str) -> str | None:
    value = section.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(key)
    return value


def _chosen(repository: str | None) -> str | None:
    """The repository asked for, as medvault.config.resolve_repository reads it."""
    return repository or os.environ.get("MEDVAULT_REPOSITORY")


def light_wal_settings(
    config: str | None, repository: str | None, source: str
) -> WalSettings | None:
    """The few keys the WAL path needs, with tomllib alone; None when anything is unusual."""
    import tomllib

    path = find_config(config)
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
        chosen = _chosen(repository)
        if chosen and chosen not in repos:
            if "://" in chosen:
                return None
            return WalSettings(url=chosen, **found)
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
        return WalSettings(url=url, keys=keys, **found)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return None


def full_wal_settings(
    settings: Settings, config: str | None, repository: str | None, source: str
) -> WalSettings:
    """Through medvault.config's validated `settings` (loaded from `config`), with its
    messages when something is wrong."""
    from medvault.config import PostgresSourceSettings, resolve_repository

    path = find_config(config)
    if path is None:
        chosen = _chosen(repository)
        if not chosen:
            raise UsageError(
                f"no medvault.toml found for source {source}: pass --config, or --repo PATH"
            )
        return WalSettings(source=source, url=chosen)
    section = settings.source.get(source)
    if section is None and _chosen(repository):
        # The source name only names the archive's folder: with the repository given
        # outright (a restored server's restore_command), no section is needed.
        url, repo_settings = resolve_repository(settings, repository, source)
        return WalSettings(
            source=source,
            url=url,
            repository=repo_settings,
            retention=settings.retention_period(None),
        )
    if section is None:
        raise UsageError(
            f'{path} has no source {source}: add a [source.{source}] section with kind = "postgres"'
        )
    if not isinstance(section, PostgresSourceSettings):
        raise UsageError(f'source {source} is not a PostgreSQL source (kind = "{section.kind}")')
    url, repo_settings = resolve_repository(settings, repository, source)
    secondary = repo_settings.secondary if repo_settings is not None else None
    replicate = repo_settings.replicate if repo_settings is not None else False
    return WalSettings(
        source=source,
        url=url,
        repository=repo_settings,
        wal_async=section.wal_async,
        wal_spool=section.wal_spool,
        dsn=section.dsn,
        pgdata=section.pgdata,
        retention=settings.retention_period(source),
        secondary=secondary,
        secondary_url=settings.repository[secondary].url if secondary is not None else None,
        replicate=secondary is not None and replicate,
    )
