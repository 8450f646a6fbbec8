"""medvault.toml -> typed settings. Validation errors name the key and the problem.
With no config file (see configfile.py), medvault runs on --repo alone."""

from __future__ import annotations

import os
import re
import tomllib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medvault.configfile import find_config
from medvault.errors import ConfigError, UsageError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RepositorySettings(_Section):
    url: str = Field(min_length=1)
    password_file: str | None = None
    password_command: str | None = None
    key_file: str | None = None


class FilesSourceSettings(_Section):
    kind: Literal["files"]
    paths: list[str] = Field(min_length=1)
    repository: str | None = None
    exclude: list[str] = []
    tags: list[str] = []
    tier: str | None = None


class PostgresSourceSettings(_Section):
    """A PostgreSQL cluster. The DSN carries no password: libpq takes it from PGPASSWORD,
    PGPASSFILE or ~/.pgpass, so it never sits in medvault.toml or in any log line."""

    kind: Literal["postgres"]
    dsn: str = Field(min_length=1)
    pgdata: str | None = None  # needed for physical backups with the local method
    repository: str | None = None
    tags: list[str] = []
    tier: str | None = None
    pg_bin: str | None = None  # directory of pg_dump & co; default: matches the server
    wal_async: bool = False
    wal_spool: str | None = None  # async push markers; default <directory of %p>/medvault-spool
    archive_timeout_s: int = Field(default=300, ge=1)  # bounded wait for a backup's stop WAL
    # How a physical backup starts: an immediate checkpoint (quick start, an I/O burst) or a
    # spread one (gentle on a busy server; the backup waits up to checkpoint_timeout).
    checkpoint: Literal["fast", "spread"] = "fast"

    @model_validator(mode="after")
    def _no_password_in_dsn(self) -> PostgresSourceSettings:
        if re.search(r"(^|\s)password\s*=|://[^/@:]*:[^/@]*@", self.dsn):
            raise ValueError(
                "dsn: holds a password; remove it and use PGPASSWORD, a passfile= in the dsn, "
                "PGPASSFILE or ~/.pgpass"
            )
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(self.dsn)
        except Exception as exc:  # libpq's own parser: the reason is its message
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "malformed"
            raise ValueError(f"dsn: {reason}") from None
        return self


SOURCE_KINDS = ("files", "postgres")
SourceSettings = Annotated[
    FilesSourceSettings | PostgresSourceSettings, Field(discriminator="kind")
]


class Settings(_Section):
    repository: dict[str, RepositorySettings] = {}
    source: dict[str, SourceSettings] = {}
    path: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        for name, source in self.source.items():
            if source.repository is not None and source.repository not in self.repository:
                raise ValueError(
                    f"source.{name}.repository: no [repository.{source.repository}] section"
                )
        return self


def _format_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = list(first["loc"])
    if len(loc) > 2 and loc[0] == "source" and loc[2] in SOURCE_KINDS:
        del loc[2]  # the union's tag (the source's kind) is not a key the user wrote
    key = ".".join(str(part) for part in loc)
    message = first["msg"].removeprefix("Value error, ")
    return f"{key}: {message}" if key else message


def load_settings(explicit: str | None = None) -> Settings:
    path = find_config(explicit)
    if path is None:
        return Settings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for section in ("repository", "source"):
        for name in raw.get(section, {}) if isinstance(raw.get(section), dict) else ():
            if not re.match(NAME_PATTERN, name):
                raise ConfigError(f"{path}: {section}.{name}: invalid name")
    try:
        return Settings(**raw, path=str(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_format_error(exc)}") from None
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def resolve_repository(
    settings: Settings, repo_option: str | None, source: str | None = None
) -> tuple[str, RepositorySettings | None]:
    """The repository URL to use and its settings when it is one named in the config."""
    chosen = repo_option or os.environ.get("MEDVAULT_REPOSITORY")
    if chosen:
        if chosen in settings.repository:
            return settings.repository[chosen].url, settings.repository[chosen]
        return chosen, None
    if source is not None and source in settings.source:
        name = settings.source[source].repository
        if name is not None:
            return settings.repository[name].url, settings.repository[name]
    if len(settings.repository) == 1:
        only = next(iter(settings.repository.values()))
        return only.url, only
    if settings.repository:
        names = ", ".join(sorted(settings.repository))
        raise UsageError(f"several repositories are configured ({names}); choose one with --repo")
    raise UsageError(
        "no repository given: pass --repo PATH, set MEDVAULT_REPOSITORY, "
        "or define [repository.NAME] in medvault.toml"
    )
