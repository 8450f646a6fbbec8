"""The exception hierarchy. Each error carries a one-line message a DBA can act on and the
exit code the CLI returns for it (documented in docs/operations.md)."""

from __future__ import annotations


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


class SnapshotNotFound(MedvaultError):
    exit_code = 4


class BackendError(MedvaultError):
    """A storage backend failed (I/O error, permission, network)."""

    exit_code = 5


class ObjectNotFound(BackendError):
    pass


class ObjectExists(BackendError):
    pass


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


class UnsupportedFormat(MedvaultError):
    exit_code = 14


class SourceUnavailable(MedvaultError):
    """A path or server to back up cannot be read."""

    exit_code = 15


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
