"""The exception hierarchy, every class medvault raises: each error carries a one-line
message a DBA can act on and the exit code the CLI returns for it. `exit_code_for` turns any
exception into that code, for the full CLI (cli/main.py) and for the fast wal-push and
wal-fetch path (cli/entry.py, cli/wal.py) alike. The codes are documented once, in
docs/operations.md.

Nothing here imports anything: cli/entry.py loads this module on every wal-push.
"""

from __future__ import annotations

# Codes no exception class carries: set by a command, or by how the process ended.
EXIT_INTERNAL = 1  # any exception that is not a MedvaultError: a bug
EXIT_NOT_ARCHIVED = 1  # wal-fetch: the file is not in the archive (recovery ends there)
EXIT_INCOMPLETE = 3  # backup: the snapshot is saved, but some files or pages were not right
# wal-fetch: anything but "not archived". PostgreSQL aborts recovery on an exit code above
# 125 instead of ending it early, at the wrong point, as it would on 1 to 125.
EXIT_ARCHIVE_UNUSABLE = 126
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2, as a shell reports it
EXIT_BROKEN_PIPE = 141  # stdout's reader went away: 128 + SIGPIPE (13), as a shell reports it


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (libpq's carry DETAIL and HINT lines after it)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class MedvaultError(Exception):
    exit_code = 1


class UsageError(MedvaultError):
    exit_code = 2


class ConfigError(UsageError):
    """medvault.toml is missing, unreadable or invalid."""


class MissingPackage(UsageError):
    """An optional Python package this command needs is not installed (boto3 for s3://): a
    matter of the host's installation, which no retry cures."""


class SnapshotNotFound(MedvaultError):
    exit_code = 4


class BackendError(MedvaultError):
    """A storage backend failed (I/O error, permission, network)."""

    exit_code = 5


class ObjectNotFound(BackendError):
    pass


class ObjectExists(BackendError):
    pass


class TransientBackendError(BackendError):
    """A request failed in a way that asking again may cure (an answer cut short, a
    connection reset while a body was read); backends/retry.py asks again."""


class NotSupported(BackendError):
    """The store cannot do what was asked (a legal hold on a store without Object Lock)."""


class RepositoryNotFound(MedvaultError):
    exit_code = 10


class RepositoryExists(MedvaultError):
    exit_code = 10


class WrongPassphrase(MedvaultError):
    """No key slot opens with the credential given."""

    exit_code = 11


class NoCredential(WrongPassphrase):
    pass


class RepositoryLocked(MedvaultError):
    exit_code = 12


class IntegrityError(MedvaultError):
    """Stored data failed verification: a damaged, missing or forged object."""

    exit_code = 13


class SlotUnusable(IntegrityError):
    """A key slot that cannot open anything: damaged, planted, or of a kind this medvault
    does not know (`unsupported`)."""

    def __init__(self, reason: str, *, unsupported: bool = False) -> None:
        super().__init__(reason)
        self.unsupported = unsupported


class UnsupportedFormat(MedvaultError):
    exit_code = 14


class SourceUnavailable(MedvaultError):
    """A path or server to back up cannot be read."""

    exit_code = 15


class RedisReplyError(SourceUnavailable):
    """A Redis server answered a command with an error reply (-ERR, -NOPERM, -WRONGPASS)."""


class RestoreTargetError(MedvaultError):
    """The restore target is unusable: a file, not empty, or outside the allowed place."""

    exit_code = 16


class TargetFull(MedvaultError):
    """The restore target ran out of space or failed to write."""

    exit_code = 17


class UnsafeSnapshot(IntegrityError):
    """A snapshot holds names that would write outside the restore target."""


class WalConflict(MedvaultError):
    """A WAL file of that name is archived already with different content."""

    exit_code = 18


class WalMissing(MedvaultError):
    """The archive lacks WAL that a backup or a recovery needs (a gap, or not yet pushed)."""

    exit_code = 19


class RecoveryFailed(MedvaultError):
    """A restored cluster did not reach its recovery target, or did not start."""

    exit_code = 20


class PageCorruption(IntegrityError):
    """A PostgreSQL page failed its checksum while being backed up."""


class ObjectLocked(BackendError):
    """A delete or overwrite refused: the object is under S3 Object Lock retention, or the
    repository is append-only."""

    exit_code = 21


class ForgetRefused(ObjectLocked):
    """Some snapshots asked for by id could not be forgotten: they are locked or held."""


class ReplicationFailed(MedvaultError):
    """The primary holds the data; the secondary could not be brought up to date."""

    exit_code = 22


class DrillFailed(MedvaultError):
    """A restore drill could not restore or validate its snapshot, or missed its RTO."""

    exit_code = 23


class AuditTrailBroken(IntegrityError):
    """`audit verify` found an audit record edited, deleted, reordered, moved or cut off."""

    exit_code = 24


class CatalogUnavailable(MedvaultError):
    """The catalog (the index behind `runs` and `stats`) cannot be opened or read: a
    PostgreSQL catalog unreachable, a SQLite file unwritable. The repositories are untouched,
    and the runs spooled on this host wait for the next catalog that opens."""

    exit_code = 25


class NotificationFailed(MedvaultError):
    """A notification channel did not deliver (`alerts test`): an unreachable receiver, a
    refused login, a rejected message. The other channels were still tried."""

    exit_code = 26


class HookFailed(MedvaultError):
    """A source's `before` or `before_restore` hook failed, timed out or could not start:
    the backup or restore did not begin (its `after` hooks still ran)."""

    exit_code = 30


class RestoreCheckFailed(MedvaultError):
    """A restore finished, and one of the source's post-restore checks (`[source.NAME.restore]
    checks`) did not pass in the restored database."""

    exit_code = 31


def exit_code_for(exc: BaseException, *, wal_fetch: bool = False) -> int:
    """The exit code for an exception that ends a command (docs/operations.md).

    `wal_fetch`: PostgreSQL's restore_command, which has codes of its own: any error is 126,
    so that PostgreSQL aborts recovery instead of taking the error for the end of the archive
    ("not archived" is not an exception: wal-fetch returns 1 for it itself)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if wal_fetch and isinstance(exc, Exception):
        return EXIT_ARCHIVE_UNUSABLE
    if isinstance(exc, MedvaultError):
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):
        return EXIT_BROKEN_PIPE
    return EXIT_INTERNAL
