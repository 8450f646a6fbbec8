"""The environment of every program medvault starts, built here and nowhere else.

medvault itself may hold MEDVAULT_PASSWORD, AWS keys and PGPASSWORD in its environment. A
child inherits none of that: it gets what any program needs to run as it would from a shell
(PATH, locale, time zone, who and where home is) plus exactly the values that child needs.
A restored PostgreSQL server may go on serving for months, and /proc/PID/environ of a server,
of pg_dump or of a password command is readable by its account for as long as it runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

# What a program expects from a login shell. HOME also locates ~/.pgpass, ~/.aws, ~/.gnupg.
_ANY_PROGRAM = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
# Where a secrets manager's client finds its agent or its credentials directory; none of
# them is a secret itself.
_SESSION = ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "GNUPGHOME", "CREDENTIALS_DIRECTORY")
# How boto3 finds an S3 store and its credential files; none of them is a secret.
_S3_LOCATION = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CA_BUNDLE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_PROFILE",
)
_S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_AZURE_KEYS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN")


def _picked(names: tuple[str, ...], environ: Mapping[str, str]) -> dict[str, str]:
    return {name: environ[name] for name in names if name in environ}


def minimal(account: str | None = None) -> dict[str, str]:
    """PATH, locale (LANG, LC_*), TZ, TMPDIR, USER and HOME; for `account` (a program run as
    another OS user) that account's name and home."""
    environ = os.environ
    env = _picked(_ANY_PROGRAM, environ)
    env.update({k: v for k, v in environ.items() if k.startswith("LC_")})
    if account is not None:
        import pwd

        entry = pwd.getpwnam(account)
        env.update(USER=entry.pw_name, LOGNAME=entry.pw_name, HOME=entry.pw_dir)
    return env


def for_server(
    account: str | None = None, carries: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A PostgreSQL server started through pg_ctl (and pg_ctl itself, pg_controldata): the
    minimal environment, plus `carries`, the values its restore_command needs (see
    `store_access`). No PG* variable: a server reads its settings from its data directory."""
    return minimal(account) | dict(carries or {})


def for_password_command() -> dict[str, str]:
    """A password command (a secrets manager's client): the minimal environment and where
    its agent or credentials directory is. Never another passphrase, key or token of ours."""
    return minimal() | _picked(_SESSION, os.environ)


def store_access(
    url: str,
    profile: str | None,
    keys_in_config: bool,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables a restored server's `medvault wal-fetch` needs to reach the repository
    at `url`: none for a local one; for S3 where the store is (endpoint, region, CA bundle,
    credential files, profile), for Azure the account; and the keys themselves only when they
    are where medvault found its own, in its environment: not when medvault.toml holds them or
    names a file of them (a profile, a credential_file). `environ`: the environment medvault
    was started with, as the shell hands it to the service (default: this process's)."""
    environ = os.environ if environ is None else environ
    if url.startswith("azure://"):
        # Azure: the account, and its key, SAS token or connection string unless
        # medvault.toml holds them or names a credential_file (keys_in_config).
        carried = _picked(("AZURE_STORAGE_ACCOUNT",), environ)
        return carried if keys_in_config else carried | _picked(_AZURE_KEYS, environ)
    if not url.startswith("s3://"):
        return {}
    carried = _picked(_S3_LOCATION, environ)
    from_files = keys_in_config or profile is not None or bool(environ.get("AWS_PROFILE"))
    if not from_files and environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        carried |= _picked(_S3_KEYS, environ)
    return carried


@dataclass
class LibpqClient:
    """How to start pg_dump, pg_restore or pg_basebackup: its environment, the DSN to give it,
    and the descriptors it must inherit (the passfile)."""

    env: dict[str, str]
    dsn: str | None
    pass_fds: tuple[int, ...] = field(default=())


def _pgpass_line(password: str) -> bytes:
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n".encode()


@contextlib.contextmanager
def libpq_client(dsn: str | None = None) -> Iterator[LibpqClient]:
    """The environment of a libpq client program connecting with `dsn`: the minimal one plus
    the PG* connection variables except PGPASSWORD. A password medvault was given in
    PGPASSWORD reaches the program through a passfile of its own: a memory-only file (never on
    disk), mode 600, that it inherits as /dev/fd/N, named by PGPASSFILE (or by the DSN's
    passfile when it has one, as PGPASSWORD outranked that for medvault's own connections).
    Never through argv or the program's environment. Start the program inside the block: it
    inherits the passfile's descriptor and keeps it after the block closes ours."""
    environ = os.environ
    env = minimal() | {k: v for k, v in environ.items() if k.startswith("PG") and k != "PGPASSWORD"}
    password = environ.get("PGPASSWORD", "")
    # No dsn: the program connects to nothing (pg_restore --list), so it needs no password.
    if dsn is None or not password or "\n" in password or not hasattr(os, "memfd_create"):
        yield LibpqClient(env, dsn)
        return
    fd = os.memfd_create("medvault-pgpass", os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)  # libpq ignores a passfile others could read
        os.write(fd, _pgpass_line(password))
        passfile = f"/dev/fd/{fd}"
        env["PGPASSFILE"] = passfile
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        if "passfile" in conninfo_to_dict(dsn):
            dsn = make_conninfo(dsn, passfile=passfile)
        yield LibpqClient(env, dsn, (fd,))
    finally:
        os.close(fd)
