"""medvault.toml -> typed settings. Validation errors name the key and the problem.
With no config file (see configfile.py), medvault runs on --repo alone."""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from medvault.configfile import find_config
from medvault.durations import parse_duration
from medvault.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from medvault.policy.retention import RetentionPolicy

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RepositorySettings(_Section):
    url: str = Field(min_length=1)
    password_file: str | None = None
    password_command: str | None = None
    key_file: str | None = None
    # A local repository that refuses every delete and overwrite (locks aside).
    append_only: bool = False
    # S3-compatible stores. Credentials come from the standard AWS chain (environment,
    # profile, instance role); keys in this file only with plaintext_credentials = true.
    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None
    storage_class: str | None = None
    sse: Literal["sse-s3", "sse-kms"] | None = None
    sse_kms_key_id: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = Field(default=None, repr=False)
    plaintext_credentials: bool = False
    # Seconds without an answer from the store before a request is retried.
    read_timeout_s: float | None = Field(default=None, gt=0, le=3600)
    # A second repository (another [repository.NAME]) that `replicate` keeps up to date.
    secondary: str | None = None
    replicate: bool = False

    @field_validator("password_command")
    @classmethod
    def _command_splits(cls, value: str | None) -> str | None:
        import shlex

        if value is None:
            return value
        try:
            words = shlex.split(value)
        except ValueError as exc:  # never echo the command: it may hold a secret
            raise ValueError(f"cannot split it into words as a shell would: {exc}") from None
        if not words:
            raise ValueError("names no command")
        return value

    @model_validator(mode="after")
    def _credentials_kept_out(self) -> RepositorySettings:
        if (self.access_key_id or self.secret_access_key) and not self.plaintext_credentials:
            raise ValueError(
                "secret_access_key: credentials in the config file are refused; use "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an instance role "
                "(or set plaintext_credentials = true to insist)"
            )
        if self.sse_kms_key_id and self.sse != "sse-kms":
            raise ValueError('sse_kms_key_id: needs sse = "sse-kms"')
        s3_keys = (
            "endpoint",
            "region",
            "path_style",
            "storage_class",
            "sse",
            "profile",
            "read_timeout_s",
        )
        if not self.url.startswith("s3://"):
            for key in s3_keys:
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: only applies to s3:// repositories")
        elif self.append_only:
            raise ValueError(
                "append_only: applies to local repositories; on S3 use a bucket with Object Lock"
            )
        return self


def _zone_ok(value: str) -> str:
    from medvault.scheduler.spec import parse_zone

    parse_zone(value)
    return value


def _schedule_ok(value: str | None, info: ValidationInfo) -> str | None:
    """A schedule read in the section's zone (validated before it: fields in order)."""
    from medvault.scheduler.spec import parse_schedule, parse_zone

    if value is not None:
        try:
            zone = parse_zone(info.data.get("timezone", "UTC"))
        except ValueError:  # reported on its own key
            zone = parse_zone("UTC")
        parse_schedule(value, zone)
    return value


class ScheduleSettings(_Section):
    """`[source.NAME.schedule]`: when each job of the source runs, a cron expression
    ("0 2 * * 0") or an interval ("every 15m"), on the wall clock of `timezone`
    (docs/scheduling.md). Files sources: `full` re-reads every file (no parent),
    `incremental` reads only files changed since the newest snapshot, `differential` those
    changed since the newest full one; PostgreSQL sources: physical backups of those types,
    and `logical` a pg_dump."""

    timezone: str = "UTC"  # first: the schedules below are read in it
    full: str | None = None
    incremental: str | None = None
    differential: str | None = None
    logical: str | None = None
    check: str | None = None
    drill: str | None = None
    prune: str | None = None  # forget by the retention policy, then prune
    # To the repository's secondary. `copy` is a pydantic method's name: an alias keeps it.
    copy_: str | None = Field(default=None, alias="copy")
    drill_pick: str = "latest"  # or "random:30d": a random snapshot of the last 30 days
    catch_up: bool = True  # a firing missed while the service was down runs at start-up

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return _zone_ok(value)

    @field_validator(
        "full", "incremental", "differential", "logical", "check", "drill", "prune", "copy_"
    )
    @classmethod
    def _schedule(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _schedule_ok(value, info)

    @field_validator("drill_pick")
    @classmethod
    def _pick(cls, value: str) -> str:
        from medvault.scheduler.spec import parse_drill_pick

        parse_drill_pick(value)
        return value

    def given(self, kinds: tuple[str, ...]) -> dict[str, str]:
        """The job kinds of `kinds` that have a schedule, with it."""
        return _given(self, kinds)


class RepositoryScheduleSettings(_Section):
    """`[schedule]`: repository-wide jobs (check, prune by every source's policy, copy to
    the secondary) of one [repository.NAME] (default: the only one)."""

    repository: str | None = None
    timezone: str = "UTC"
    check: str | None = None
    prune: str | None = None
    copy_: str | None = Field(default=None, alias="copy")
    catch_up: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return _zone_ok(value)

    @field_validator("check", "prune", "copy_")
    @classmethod
    def _schedule(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _schedule_ok(value, info)

    def given(self, kinds: tuple[str, ...]) -> dict[str, str]:
        return _given(self, kinds)


def _given(section: BaseModel, kinds: tuple[str, ...]) -> dict[str, str]:
    found = {kind: getattr(section, "copy_" if kind == "copy" else kind) for kind in kinds}
    return {kind: spec for kind, spec in found.items() if spec is not None}


class FilesSourceSettings(_Section):
    kind: Literal["files"]
    paths: list[str] = Field(min_length=1)
    repository: str | None = None
    exclude: list[str] = []
    tags: list[str] = []
    tier: str | None = None
    retention: RetentionSettings | None = None  # overrides the tier's
    classification: str | None = None  # overrides the tier's (audit records)
    compliance: list[str] | None = None  # overrides the tier's
    schedule: ScheduleSettings = ScheduleSettings()


class DrillSettings(_Section):
    """`[source.NAME.drill]`: what a restore drill checks beyond tables and indexes."""

    # SQL run in the drill's restored copy; each passes when its first value is true.
    checks: list[str] = []
    # The database they run in; default: the source dsn's database.
    database: str | None = None
    # The throwaway cluster's shared_buffers (physical drills). Not production's: the drill
    # host may be smaller, and a one-pass read of the copy gains nothing from a large pool
    # that the kernel must first fault in.
    shared_buffers: str = Field(default="128MB", pattern=r"^\d+\s*(kB|MB|GB|TB)?$")


class DrillDefaults(_Section):
    """`[drill]`: where restore drills make their scratch directories (default: the
    system's temporary directory). `medvault status` looks there for scratch left behind."""

    scratch: str | None = None


class PostgresSourceSettings(_Section):
    """A PostgreSQL cluster. The DSN carries no password: libpq takes it from PGPASSWORD,
    PGPASSFILE or ~/.pgpass, so it never sits in medvault.toml or in any log line."""

    kind: Literal["postgres"]
    dsn: str = Field(min_length=1)
    pgdata: str | None = None  # needed for physical backups with the local method
    repository: str | None = None
    tags: list[str] = []
    tier: str | None = None
    retention: RetentionSettings | None = None  # overrides the tier's
    classification: str | None = None  # overrides the tier's (audit records)
    compliance: list[str] | None = None  # overrides the tier's
    pg_bin: str | None = None  # directory of pg_dump & co; default: matches the server
    wal_async: bool = False
    wal_spool: str | None = None  # async push markers; default <directory of %p>/medvault-spool
    archive_timeout_s: int = Field(default=300, ge=1)  # bounded wait for a backup's stop WAL
    # How a physical backup starts: an immediate checkpoint (quick start, an I/O burst) or a
    # spread one (gentle on a busy server; the backup waits up to checkpoint_timeout).
    checkpoint: Literal["fast", "spread"] = "fast"
    # Archived WAL younger than this is kept by prune even when no backup needs it.
    pitr_window: str | None = None
    drill: DrillSettings = DrillSettings()
    schedule: ScheduleSettings = ScheduleSettings()

    @field_validator("pitr_window")
    @classmethod
    def _window_is_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _no_password_in_dsn(self) -> PostgresSourceSettings:
        # pg_dump, pg_restore and pg_basebackup get the dsn on their command line, which any
        # local user can read with ps.
        holds_password = (
            "dsn: holds a password; remove it and keep the password in a .pgpass password "
            "file (passfile=PATH in the dsn, PGPASSFILE or ~/.pgpass) or in PGPASSWORD"
        )
        from psycopg.conninfo import conninfo_to_dict

        try:
            # libpq's own parser, so keyword=value and URI forms (user:secret@, ?password=)
            # are read exactly as libpq will read them.
            parts = conninfo_to_dict(self.dsn)
        except Exception as exc:
            if re.search(r"password|://[^/@]*:[^/@]*@", self.dsn, re.IGNORECASE):
                raise ValueError(holds_password) from None  # libpq may quote the secret
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "malformed"
            raise ValueError(f"dsn: {reason}") from None
        if "password" in parts:
            raise ValueError(holds_password)
        return self


class RetentionSettings(_Section):
    """Which snapshots `forget` keeps (see policy/retention.py)."""

    keep_last: int = Field(default=0, ge=0)
    keep_hourly: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    keep_monthly: int = Field(default=0, ge=0)
    keep_yearly: int = Field(default=0, ge=0)
    keep_within: str | None = None

    @field_validator("keep_within")
    @classmethod
    def _is_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    def policy(self) -> RetentionPolicy:
        from medvault.policy.retention import RetentionPolicy

        return RetentionPolicy(
            last=self.keep_last,
            hourly=self.keep_hourly,
            daily=self.keep_daily,
            weekly=self.keep_weekly,
            monthly=self.keep_monthly,
            yearly=self.keep_yearly,
            within=parse_duration(self.keep_within) if self.keep_within else None,
        )


class TierSettings(_Section):
    """A class of data: how much may be lost (rpo), how fast it must be back (rto), and how
    long its backups must be kept at least (floor; on a bucket with Object Lock, also how
    long they cannot be deleted)."""

    rpo: str | None = None
    rto: str | None = None
    floor: str | None = None
    # How often a restore drill must pass (e.g. "7d"): status warns when the last passing
    # drill is older, or there is none.
    drill_every: str | None = None
    retention: RetentionSettings | None = None
    # What the data is, for audit records and reports: e.g. "phi" (protected health
    # information), "pii", "internal"; and the regimes it falls under ("hipaa", "gdpr").
    classification: str | None = None
    compliance: list[str] = []

    @field_validator("rpo", "rto", "floor", "drill_every")
    @classmethod
    def _is_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def floor_period(self) -> dt.timedelta | None:
        return parse_duration(self.floor) if self.floor else None


SOURCE_KINDS = ("files", "postgres")
SCHEDULE_KINDS = (
    "full",
    "incremental",
    "differential",
    "logical",
    "check",
    "drill",
    "prune",
    "copy",
)
SourceSettings = Annotated[
    FilesSourceSettings | PostgresSourceSettings, Field(discriminator="kind")
]


class AuditSettings(_Section):
    """`[audit]`: how long audit records are kept at least (default: the longest tier
    floor); prune never removes a younger one."""

    retention: str | None = None

    @field_validator("retention")
    @classmethod
    def _is_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class CatalogSettings(_Section):
    """`[catalog]`: the queryable index of run and audit records (SQLAlchemy URL; default
    SQLite in the state directory). Several hosts share one by a PostgreSQL URL."""

    url: str | None = None


class Settings(_Section):
    repository: dict[str, RepositorySettings] = {}
    source: dict[str, SourceSettings] = {}
    tier: dict[str, TierSettings] = {}
    drill: DrillDefaults = DrillDefaults()
    audit: AuditSettings = AuditSettings()
    catalog: CatalogSettings = CatalogSettings()
    schedule: RepositoryScheduleSettings = RepositoryScheduleSettings()
    path: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        for name, source in self.source.items():
            if source.repository is not None and source.repository not in self.repository:
                raise ValueError(
                    f"source.{name}.repository: no [repository.{source.repository}] section"
                )
            if source.tier is not None and source.tier not in self.tier:
                raise ValueError(f"source.{name}.tier: no [tier.{source.tier}] section")
            if source.retention is not None and source.tier is not None:
                _check_floor(f"source.{name}.retention", source.retention, self.tier[source.tier])
        for name, tier in self.tier.items():
            if tier.retention is not None:
                _check_floor(f"tier.{name}.retention", tier.retention, tier)
        for name, repo in self.repository.items():
            if repo.secondary is not None and repo.secondary not in self.repository:
                raise ValueError(
                    f"repository.{name}.secondary: no [repository.{repo.secondary}] section"
                )
            if repo.secondary == name:
                raise ValueError(f"repository.{name}.secondary: names the repository itself")
            if repo.replicate and repo.secondary is None:
                raise ValueError(f'repository.{name}.replicate: needs secondary = "NAME"')
        return self

    @model_validator(mode="after")
    def _schedules_resolve(self) -> Settings:
        """What a schedule asks must be possible: the job's repository, a logical backup of
        a PostgreSQL source only, a retention policy to prune by, a secondary to copy to."""
        for name, source in self.source.items():
            key = f"source.{name}.schedule"
            jobs = source.schedule.given(SCHEDULE_KINDS)
            if not jobs:
                continue
            if isinstance(source, FilesSourceSettings) and "logical" in jobs:
                raise ValueError(
                    f"{key}.logical: a files source has no logical backups; use full, "
                    "incremental or differential"
                )
            repository = self.job_repository(name)
            if repository is None:
                raise ValueError(f"{key}: {self._no_repository(name)}")
            if "prune" in jobs and self.retention_policy(name) is None:
                raise ValueError(
                    f"{key}.prune: source {name} has no retention policy to forget by "
                    f"([source.{name}.retention] or its tier's)"
                )
            if "copy" in jobs and self.repository[repository].secondary is None:
                raise ValueError(
                    f'{key}.copy: repository {repository} has no secondary = "NAME" to copy to'
                )
        jobs = self.schedule.given(("check", "prune", "copy"))
        chosen = self.schedule.repository
        if chosen is not None and chosen not in self.repository:
            raise ValueError(f"schedule.repository: no [repository.{chosen}] section")
        if jobs:
            repository = self.job_repository(None)
            if repository is None:
                raise ValueError(f"schedule: {self._no_repository(None)}")
            if "copy" in jobs and self.repository[repository].secondary is None:
                raise ValueError(
                    f'schedule.copy: repository {repository} has no secondary = "NAME" to copy to'
                )
        return self

    def job_repository(self, source: str | None) -> str | None:
        """The [repository.NAME] a scheduled job of `source` (None: a repository-wide job)
        works on: the source's own, [schedule] repository, else the only one configured."""
        section = self.source.get(source) if source is not None else None
        named = section.repository if section is not None else self.schedule.repository
        if named is not None:
            return named
        return next(iter(self.repository)) if len(self.repository) == 1 else None

    def _no_repository(self, source: str | None) -> str:
        if not self.repository:
            return "a schedule needs a [repository.NAME] section"
        names = ", ".join(sorted(self.repository))
        where = f'repository = "NAME" in [source.{source}]' if source else 'repository = "NAME"'
        return f"several repositories are configured ({names}); name one with {where}"

    def retention_policy(self, source: str) -> RetentionPolicy | None:
        """The source's own retention, else its tier's; None when neither has one."""
        section = self.source.get(source)
        if section is None:
            return None
        if section.retention is not None:
            return section.retention.policy()
        if section.tier is not None and self.tier[section.tier].retention is not None:
            retention = self.tier[section.tier].retention
            return retention.policy() if retention is not None else None
        return None

    def data_classification(self, source: str | None) -> str | None:
        """The source's classification, else its tier's."""
        section = self.source.get(source) if source else None
        if section is None:
            return None
        if section.classification is not None:
            return section.classification
        return self.tier[section.tier].classification if section.tier is not None else None

    def compliance_flags(self, source: str | None) -> list[str]:
        """The source's compliance regimes, else its tier's."""
        section = self.source.get(source) if source else None
        if section is None:
            return []
        if section.compliance is not None:
            return list(section.compliance)
        return list(self.tier[section.tier].compliance) if section.tier is not None else []

    def retention_description(self, source: str | None) -> str | None:
        """The source's retention in an auditor's words: its tier, floor and keep rules."""
        section = self.source.get(source) if source else None
        if section is None:
            return None
        parts = []
        if section.tier is not None:
            tier = self.tier[section.tier]
            parts.append(f"tier {section.tier}" + (f", floor {tier.floor}" if tier.floor else ""))
        rules = section.retention or (
            self.tier[section.tier].retention if section.tier is not None else None
        )
        if rules is not None:
            kept = [
                f"{name.removeprefix('keep_').replace('_', ' ')} {value}"
                for name, value in rules.model_dump().items()
                if value
            ]
            parts.append("keep " + ", ".join(kept) if kept else "keep everything")
        return "; ".join(parts) or "none"

    def audit_retention(self) -> dt.timedelta | None:
        """How long audit records are kept at least: [audit] retention, else the longest
        tier floor (None: no tier has one, and audit records are never removed)."""
        if self.audit.retention is not None:
            return parse_duration(self.audit.retention)
        return self.retention_period(None)

    def retention_period(self, source: str | None) -> dt.timedelta | None:
        """How long new objects must stay undeletable: the source's tier floor, or for
        objects that belong to no tier (keys, ad-hoc backups) the longest floor defined."""
        section = self.source.get(source) if source else None
        if section is not None and section.tier is not None:
            return self.tier[section.tier].floor_period
        floors = [t.floor_period for t in self.tier.values() if t.floor_period is not None]
        return max(floors, default=None)


def _check_floor(key: str, retention: RetentionSettings, tier: TierSettings) -> None:
    """A policy must reach back at least as far as the tier's floor."""
    floor = tier.floor_period
    policy = retention.policy()
    if floor is None or policy.empty or policy.reach() >= floor:
        return
    from medvault.durations import format_duration

    raise ValueError(
        f"{key}: keeps snapshots for about {format_duration(policy.reach())} at most, less "
        f"than the tier's floor of {tier.floor}; raise keep_yearly, keep_monthly or "
        "keep_within to reach it"
    )


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
    for section in ("repository", "source", "tier"):
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
