"""Redis sources: `backup_redis` (run "backup") and the restore of a Redis snapshot, into a
running server or to an RDB file (called by service/restore.py's `restore`, inside its run).

The password is read from the source's `password_file` here, handed to the protocol code as
a value, and never logged; a URL holding one is refused (config.py, redisdb/resp.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medvault.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from medvault.config import RedisSourceSettings
    from medvault.redisdb.facts import RedisFacts
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository
    from medvault.service.backup import DryRunBackupResult, Replication
    from medvault.service.runs import Run
    from medvault.service.session import Session
    from medvault.sources.redis import RedisSource

Progress = Callable[[int], None] | None


@dataclass(frozen=True)
class RedisBackupOptions:
    source: str  # a Redis source in medvault.toml
    tags: tuple[str, ...] = ()  # added to the source's own


@dataclass(frozen=True)
class RedisBackupResult:
    snapshot: Snapshot
    facts: RedisFacts
    bytes_read: int
    bytes_added: int
    duration: float
    replication: Replication

    @property
    def complete(self) -> bool:
        return True


@dataclass(frozen=True)
class RedisRestoreOptions:
    url: str | None = None  # a running server: redis://HOST:PORT
    password_file: str | None = None  # its password; default: the source's
    flush: bool = False
    replace: bool = False
    rdb_file: str | None = None  # or: write the RDB here, for a stopped server
    force: bool = False  # rdb_file: replace an existing file


@dataclass(frozen=True)
class RedisRestoreResult:
    snapshot_id: str
    short_id: str
    target: str  # the server's address, or the RDB file
    keys: dict[int, int] = field(default_factory=dict)  # restored per database
    expired: int = 0  # expired since the backup: not restored
    bytes_read: int = 0
    duration: float = 0.0
    rdb_file: bool = False
    hook_problem: str | None = None  # an after_restore hook that failed (the keys stay)


def redis_settings(session: Session, name: str) -> RedisSourceSettings | None:
    from medvault.config import RedisSourceSettings

    if name not in session.configured_sources():
        return None
    settings = session.settings.source[name]
    return settings if isinstance(settings, RedisSourceSettings) else None


def read_password(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the Redis password_file {path}: {exc.strerror}") from None
    return text.rstrip("\r\n")


def backup_redis(
    session: Session, options: RedisBackupOptions, on_progress: Progress = None
) -> RedisBackupResult:
    """An RDB snapshot of a configured Redis source."""
    with session.run("backup", source=options.source) as run:
        return backup_in_run(session, run, options, on_progress)


def backup_in_run(
    session: Session, run: Run, options: RedisBackupOptions, on_progress: Progress
) -> RedisBackupResult:
    from medvault.service.backup import _record, _replicate
    from medvault.service.hooks import around
    from medvault.sources.redis import backup_redis as take

    name = options.source
    server = _server(session, name)
    settings = redis_settings(session, name)
    assert settings is not None  # _server said so
    repo = session.open(name)
    run.repository = repo.url
    with around(session, run, name) as hooks:
        done = take(
            repo,
            source=name,
            server=server,
            tags=tuple(dict.fromkeys([*settings.tags, *options.tags])),
            on_progress=on_progress,
        )
        snap = done.snapshot
        hooks.snapshot = snap.id
        _record(run, snap, read=done.bytes_read, stored=done.bytes_added)
        run.details["keys"] = sum(done.facts.keys_after.values())
        replication = _replicate(session, run, repo, snap.id, name, [])
    return RedisBackupResult(
        snap, done.facts, done.bytes_read, done.bytes_added, done.duration, replication
    )


def dry_run_in_run(
    session: Session, run: Run, name: str, on_progress: Progress
) -> DryRunBackupResult:
    """`backup --dry-run` of a Redis source: the RDB transferred and counted, nothing
    stored; the server forks for it as for a backup."""
    from medvault.service.backup import DryRunBackupResult, _record_dry_run
    from medvault.sources.redis import dry_run_redis

    server = _server(session, name)
    repo = session.open(name)
    run.repository = repo.url
    found, facts = dry_run_redis(repo, source=name, server=server, on_progress=on_progress)
    _record_dry_run(run, "full", None, found.bytes_read, found)
    keys = sum(facts.keys_after.values())
    run.details["keys"] = keys
    return DryRunBackupResult.of_stream(
        name,
        found,
        kind="redis",
        rows=keys,
        notes=(f"{keys} keys in the RDB's databases; the server forked to write it",),
    )


def _server(session: Session, name: str) -> RedisSource:
    """The configured Redis source as the sources layer takes it."""
    from dataclasses import replace

    from medvault.redisdb.resp import parse_url
    from medvault.sources.redis import RedisSource

    settings = redis_settings(session, name)
    if settings is None:
        raise UsageError(f"source {name} is not a Redis source of medvault.toml")
    address = parse_url(settings.url, f"source.{name}.url")
    if settings.username:
        address = replace(address, username=settings.username)
    return RedisSource(address, read_password(settings.password_file), settings.tier)


def restore_in_run(
    session: Session,
    run: Run,
    repo: Repository,
    snap: Snapshot,
    options: RedisRestoreOptions,
    on_progress: Progress,
) -> RedisRestoreResult:
    """Restore a Redis snapshot into a running server, or write its RDB to a file."""
    from dataclasses import replace

    from medvault.recovery.redis import restore_to_file, restore_to_server
    from medvault.redisdb.resp import parse_url

    if (options.url is None) == (options.rdb_file is None):
        raise UsageError(
            "a Redis snapshot is restored into a running server with --redis-url "
            "redis://HOST:PORT, or written for a stopped one with --rdb-file PATH"
        )
    if options.flush and options.replace:
        raise UsageError("give --flush or --replace, not both")
    if options.rdb_file is not None:
        if options.flush or options.replace:
            raise UsageError("--flush and --replace apply to --redis-url")
        run.details["rdb_file"] = options.rdb_file
        run.destination = options.rdb_file
        written = restore_to_file(
            repo, snap, options.rdb_file, force=options.force, on_progress=on_progress
        )
        run.add_bytes(restored=written)
        return RedisRestoreResult(
            snap.id, snap.short_id, options.rdb_file, bytes_read=written, rdb_file=True
        )
    assert options.url is not None
    target = parse_url(options.url, "--redis-url")
    password_file = options.password_file
    settings = redis_settings(session, snap.source)
    if password_file is None and settings is not None:
        password_file = settings.password_file
        if target.username is None and settings.username:
            target = replace(target, username=settings.username)
    run.destination = target.describe()
    run.details.update(target=target.describe(), flush=options.flush, replace=options.replace)
    done = restore_to_server(
        repo,
        snap,
        target=target,
        password=read_password(password_file),
        flush=options.flush,
        replace=options.replace,
        on_progress=on_progress,
    )
    run.add_bytes(restored=done.bytes_read)
    run.details["keys"] = sum(done.keys.values())
    return RedisRestoreResult(
        snap.id,
        snap.short_id,
        target.describe(),
        keys=dict(done.keys),
        expired=done.expired,
        bytes_read=done.bytes_read,
        duration=done.duration,
    )
