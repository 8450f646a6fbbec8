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
from medvault.sizes import parse_size

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
    # Azure Blob Storage (azure://): the storage account (its endpoint defaults to
    # https://ACCOUNT.blob.core.windows.net; `endpoint` names another: Azurite, sovereign
    # clouds); credentials from AZURE_STORAGE_* or credential_file (a connection string, SAS
    # token or account key), account_key / sas_token here only with plaintext_credentials.
    account: str | None = None
    credential_file: str | None = None
    account_key: str | None = Field(default=None, repr=False)
    sas_token: str | None = Field(default=None, repr=False)
    # Seconds without an answer from the store before a request is retried.
    read_timeout_s: float | None = Field(default=None, gt=0, le=3600)
    # A second repository (another [repository.NAME]) that `replicate` keeps up to date.
    secondary: str | None = None
    replicate: bool = False
    # How much the repository may take ("500GB"): storage_used_ratio and the storage alerts
    # judge against it. S3 has no size of its own; a local repository without it is judged
    # against its file system.
    quota: str | None = None

    @field_validator("quota")
    @classmethod
    def _quota_is_size(cls, value: str | None) -> str | None:
        from medvault.sizes import parse_size

        if value is not None and parse_size(value) <= 0:
            raise ValueError("must be more than 0 bytes")
        return value

    @property
    def quota_bytes(self) -> int | None:
        from medvault.sizes import parse_size

        return parse_size(self.quota) if self.quota is not None else None

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
        if (self.account_key or self.sas_token) and not self.plaintext_credentials:
            raise ValueError(
                "account_key/sas_token: credentials in the config file are refused; use "
                "AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN "
                "or credential_file (or set plaintext_credentials = true to insist)"
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
        azure_keys = ("account", "credential_file", "account_key", "sas_token")
        shared = ("endpoint", "read_timeout_s")
        if self.url.startswith("azure://"):
            for key in (*s3_keys, "access_key_id", "secret_access_key"):
                if key not in shared and getattr(self, key) is not None:
                    raise ValueError(f"{key}: only applies to s3:// repositories")
        else:
            for key in azure_keys:
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: only applies to azure:// repositories")
        if not self.url.startswith(("s3://", "azure://")):
            for key in s3_keys:
                if getattr(self, key) is not None:
                    where = "s3:// and azure://" if key in shared else "s3://"
                    raise ValueError(f"{key}: only applies to {where} repositories")
        elif self.append_only:
            raise ValueError(
                "append_only: applies to local repositories; on S3 use a bucket with Object "
                "Lock, on Azure a container with version-level immutability"
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


class HooksSettings(_Section):
    """`[source.NAME.hooks]`: commands run around the source's backups and restores. Each is
    split as a shell would split it (shlex) and run without a shell (write `sh -c '…'` for
    one), with a minimal environment: no secret of medvault's (docs/operations.md)."""

    before: list[str] = []  # before a backup reads anything; one failing fails the backup
    after: list[str] = []  # after it, whether it succeeded or failed
    before_restore: list[str] = []
    after_restore: list[str] = []
    timeout: str = "5m"  # each command's; one that runs longer is killed and has failed

    @field_validator("before", "after", "before_restore", "after_restore")
    @classmethod
    def _commands(cls, value: list[str]) -> list[str]:
        import shlex

        for command in value:
            try:
                words = shlex.split(command)
            except ValueError as exc:
                raise ValueError(f"{command!r}: {exc}") from None
            if not words:
                raise ValueError("a hook command is empty")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        return _is_duration(value)


class RestoreCheckSettings(_Section):
    """`[source.NAME.restore]`: SQL run in the database after every restore into one; each
    passes when its first value is true, as a drill's checks."""

    checks: list[str] = []


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
    # A backup smaller than this ("1MB", "100MB") fires backup_too_small; else [alerts] min_size.
    min_size: str | None = None
    hooks: HooksSettings = HooksSettings()

    _min_size_is_size = field_validator("min_size")(lambda v: _is_size(v))


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
    # Logical backups of these tables only / without these (pg_dump's -t / -T patterns).
    tables: list[str] = []
    exclude_tables: list[str] = []
    drill: DrillSettings = DrillSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    # A backup smaller than this ("1MB", "100MB") fires backup_too_small; else [alerts] min_size.
    min_size: str | None = None
    hooks: HooksSettings = HooksSettings()
    restore: RestoreCheckSettings = RestoreCheckSettings()

    _min_size_is_size = field_validator("min_size")(lambda v: _is_size(v))

    @field_validator("pitr_window")
    @classmethod
    def _window_is_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _no_password_in_dsn(self) -> PostgresSourceSettings:
        _check_dsn(self.dsn)
        return self


class PostgresCsvSourceSettings(_Section):
    """Tables a procedure keeps as CSV: each one's rows as `COPY ... TO STDOUT (FORMAT csv,
    HEADER)`, all of them in one snapshot taken in one transaction."""

    kind: Literal["postgres-csv"]
    dsn: str = Field(min_length=1)
    tables: list[str] = Field(min_length=1)  # pg_dump -t patterns
    exclude_tables: list[str] = []
    repository: str | None = None
    tags: list[str] = []
    tier: str | None = None
    retention: RetentionSettings | None = None
    classification: str | None = None
    compliance: list[str] | None = None
    schedule: ScheduleSettings = ScheduleSettings()
    min_size: str | None = None
    hooks: HooksSettings = HooksSettings()
    restore: RestoreCheckSettings = RestoreCheckSettings()  # checks after every load

    _min_size_is_size = field_validator("min_size")(lambda v: _is_size(v))

    @model_validator(mode="after")
    def _no_password_in_dsn(self) -> PostgresCsvSourceSettings:
        _check_dsn(self.dsn)
        return self


def _check_dsn(dsn: str) -> None:
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
        parts = conninfo_to_dict(dsn)
    except Exception as exc:
        if re.search(r"password|://[^/@]*:[^/@]*@", dsn, re.IGNORECASE):
            raise ValueError(holds_password) from None  # libpq may quote the secret
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "malformed"
        raise ValueError(f"dsn: {reason}") from None
    if "password" in parts:
        raise ValueError(holds_password)


class RedisSourceSettings(_Section):
    """A Redis server (backed up as an RDB over the replication protocol). The URL carries
    no password: it is read from password_file, with `username` for a Redis 6 ACL user."""

    kind: Literal["redis"]
    url: str = Field(min_length=1)  # redis://HOST:PORT/DB or unix:///path/to.sock
    password_file: str | None = None
    username: str | None = None
    hooks: HooksSettings = HooksSettings()
    repository: str | None = None
    tags: list[str] = []
    tier: str | None = None
    retention: RetentionSettings | None = None  # overrides the tier's
    classification: str | None = None  # overrides the tier's (audit records)
    compliance: list[str] | None = None  # overrides the tier's
    schedule: ScheduleSettings = ScheduleSettings()
    # A backup smaller than this ("1MB", "100MB") fires backup_too_small; else [alerts] min_size.
    min_size: str | None = None

    _min_size_is_size = field_validator("min_size")(lambda v: _is_size(v))

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ValueError(f"not a Redis URL ({exc})") from None
        if parts.password is not None or "password" in parts.query.lower():
            raise ValueError("holds a password; remove it and keep the password in password_file")
        if parts.scheme not in ("redis", "unix"):
            raise ValueError("must start with redis:// or unix:// (TLS is not supported)")
        if parts.scheme == "redis" and not parts.hostname:
            raise ValueError("names no host (redis://HOST:PORT/DB)")
        return value


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


SOURCE_KINDS = ("files", "postgres", "postgres-csv", "redis")
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
    FilesSourceSettings | PostgresSourceSettings | PostgresCsvSourceSettings | RedisSourceSettings,
    Field(discriminator="kind"),
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


class ServeSettings(_Section):
    """`[serve]`: where `medvault serve` listens (/metrics, /healthz), and how long it lets
    running jobs end cleanly after SIGTERM before it kills them."""

    listen: str = "127.0.0.1:8750"
    stop_timeout: str = "5m"

    @field_validator("listen")
    @classmethod
    def _is_address(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("stop_timeout")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT ("[::1]:8750" for IPv6) -> (host, port); ValueError naming the form."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT, as in 127.0.0.1:8750")
    return host, int(port)


def check_http_url(key: str, url: str) -> str:
    """A webhook, Slack or Alertmanager URL: http(s), a host, no credentials. Never echoed:
    such URLs often carry a token. `key` prefixes the message ("entry 2: "), or is empty."""
    from urllib.parse import urlsplit

    key = f"{key}: " if key else ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        raise ValueError(f"{key}not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key}needs an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{key}credentials in the URL are refused; use a token in its path")
    return url


_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NotifySettings(_Section):
    """`[notify]`: where alerts go (docs/notifications.md). Webhook and Slack URLs carry
    tokens: they may be read from a file instead (`webhook_file`, `slack_file`: one URL a
    line), and are never printed whole. The SMTP password only ever comes from
    `smtp_password_file`."""

    webhook: list[str] = Field(default=[], repr=False)
    webhook_file: str | None = None
    slack: list[str] = Field(default=[], repr=False)
    slack_file: str | None = None
    email: list[str] = []
    # smtp://[user@]host[:port] (STARTTLS, port 587) or smtps://[user@]host[:port] (TLS, 465).
    smtp_url: str | None = None
    smtp_password_file: str | None = None
    smtp_from: str | None = None
    smtp_ca_file: str | None = None  # trust this CA instead of the system's
    # False only for a relay on the loopback address: everything else speaks TLS.
    smtp_starttls: bool | None = None
    alertmanager: str | None = None  # its base URL: alerts go to /api/v2/alerts
    # Where a reader of an alert finds more (the service's or a dashboard's URL).
    external_url: str | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("webhook", "slack")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return [check_http_url(f"entry {i + 1}", url) for i, url in enumerate(value)]

    @field_validator("alertmanager", "external_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return check_http_url("", value) if value is not None else None

    @field_validator("email")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for i, address in enumerate(value):
            if not _ADDRESS.fullmatch(address):
                raise ValueError(f"entry {i + 1}: not an address like ops@clinic.example")
        return value

    @model_validator(mode="after")
    def _smtp(self) -> NotifySettings:
        from urllib.parse import urlsplit

        if self.email and (self.smtp_url is None or self.smtp_from is None):
            raise ValueError("email: needs smtp_url and smtp_from")
        if self.smtp_from is not None and not _ADDRESS.fullmatch(self.smtp_from):
            raise ValueError("smtp_from: not an address like medvault@clinic.example")
        if self.smtp_url is None:
            return self
        try:
            parts = urlsplit(self.smtp_url)
            parts.port  # noqa: B018
        except ValueError:
            raise ValueError("smtp_url: not a valid URL") from None
        if parts.password is not None:
            raise ValueError(
                "smtp_url: holds a password; remove it and keep the password in smtp_password_file"
            )
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("smtp_url: needs smtp://[user@]host[:port] or smtps://…")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("smtp_url: takes no path or query")
        if (parts.username is None) != (self.smtp_password_file is None):
            raise ValueError(
                "smtp_password_file: goes with a user in smtp_url (smtp://USER@host), "
                "both or neither"
            )
        if self.smtp_starttls is False:
            if parts.scheme == "smtps":
                raise ValueError("smtp_starttls: smtps:// always speaks TLS")
            if not _is_loopback(parts.hostname):
                raise ValueError(
                    "smtp_starttls: may be false only for a server on the loopback address"
                )
        return self

    @property
    def configured(self) -> bool:
        return bool(
            self.webhook
            or self.webhook_file
            or self.slack
            or self.slack_file
            or self.email
            or self.alertmanager
        )


def _is_size(value: str | None) -> str | None:
    if value is not None:
        parse_size(value)
    return value


def _is_duration(value: str) -> str:
    parse_duration(value)
    return value


class AlertSettings(_Section):
    """`[alerts]`: the thresholds of the alert rules `serve` and `medvault alerts` evaluate
    (monitoring/alerts.py; docs/alerts.md), how often serve evaluates them and sends a firing
    alert again, and how long a silence may last."""

    # No successful backup of a source for this long (or beyond its tier's RPO, whichever
    # is shorter) is critical.
    backup_max_age: str = "26h"
    # Consecutive failures of a job (source and operation) per severity.
    failures_warning: int = Field(default=1, ge=1)
    failures_critical: int = Field(default=2, ge=1)
    failures_emergency: int = Field(default=3, ge=1)
    # A backup still running after this long is a warning.
    running_max: str = "2h"
    # Repository storage in use, in percent of its capacity.
    storage_warning: float = Field(default=80, gt=0, le=100)
    storage_critical: float = Field(default=90, gt=0, le=100)
    storage_emergency: float = Field(default=95, gt=0, le=100)
    # Age of the newest archived WAL segment.
    wal_lag_warning: str = "5m"
    wal_lag_critical: str = "10m"
    wal_lag_emergency: str = "30m"
    # Backups smaller than this warn (a source's own min_size overrides it); none by default.
    min_size: str | None = None
    # A backup more than this many percent off the mean of the ones before it warns…
    size_deviation: float = Field(default=50, gt=0)
    # …the mean of at most this many successful backups before it.
    size_window: int = Field(default=7, ge=1, le=100)
    # A firing alert is sent again this often (Alertmanager's default repeat_interval).
    repeat_interval: str = "4h"
    # How often `serve` evaluates the rules.
    evaluate_every: str = "1m"
    # The longest silence `alerts silence --for` accepts: a forgotten silence must end.
    max_silence: str = "30d"

    _durations = field_validator(
        "backup_max_age",
        "running_max",
        "wal_lag_warning",
        "wal_lag_critical",
        "wal_lag_emergency",
        "repeat_interval",
        "evaluate_every",
        "max_silence",
    )(lambda v: _is_duration(v))
    _min_size_is_size = field_validator("min_size")(lambda v: _is_size(v))

    @model_validator(mode="after")
    def _levels_ascend(self) -> AlertSettings:
        for what, levels in (
            ("failures", (self.failures_warning, self.failures_critical, self.failures_emergency)),
            ("storage", (self.storage_warning, self.storage_critical, self.storage_emergency)),
            (
                "wal_lag",
                tuple(
                    parse_duration(v)
                    for v in (self.wal_lag_warning, self.wal_lag_critical, self.wal_lag_emergency)
                ),
            ),
        ):
            if not levels[0] <= levels[1] <= levels[2]:  # type: ignore[operator]
                raise ValueError(
                    f"{what}_critical: must lie between {what}_warning and {what}_emergency "
                    "(warning <= critical <= emergency)"
                )
        for key in ("repeat_interval", "evaluate_every"):
            if parse_duration(getattr(self, key)) <= dt.timedelta(0):
                raise ValueError(f"{key}: must be longer than 0s")
        return self

    def duration(self, key: str) -> dt.timedelta:
        """One of the duration keys, parsed."""
        return parse_duration(getattr(self, key))


class Settings(_Section):
    repository: dict[str, RepositorySettings] = {}
    source: dict[str, SourceSettings] = {}
    tier: dict[str, TierSettings] = {}
    drill: DrillDefaults = DrillDefaults()
    audit: AuditSettings = AuditSettings()
    catalog: CatalogSettings = CatalogSettings()
    schedule: RepositoryScheduleSettings = RepositoryScheduleSettings()
    serve: ServeSettings = ServeSettings()
    notify: NotifySettings = NotifySettings()
    alerts: AlertSettings = AlertSettings()
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
            if isinstance(source, PostgresCsvSourceSettings):
                for kind in ("full", "incremental", "differential"):
                    if kind in jobs:
                        raise ValueError(
                            f"{key}.{kind}: a postgres-csv source is exported with the "
                            "logical job only"
                        )
            if isinstance(source, RedisSourceSettings):
                for kind in ("logical", "incremental", "differential"):
                    if kind in jobs:
                        raise ValueError(
                            f"{key}.{kind}: a Redis backup is always a whole RDB: schedule full"
                        )
            if isinstance(source, PostgresSourceSettings) and source.pgdata is None:
                for kind in ("incremental", "differential"):
                    if kind in jobs:
                        raise ValueError(
                            f"{key}.{kind}: needs pgdata (the local method); without it a "
                            "physical backup is streamed and always full: schedule full"
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

    def backup_min_size(self, source: str) -> int | None:
        """Bytes below which a backup of `source` is too small: its min_size, else [alerts]
        min_size; None when neither is set."""
        section = self.source.get(source)
        text = section.min_size if section is not None and section.min_size else None
        text = text or self.alerts.min_size
        return parse_size(text) if text else None

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
