"""Where a passphrase or key file comes from. Never from argv: from the environment, a file,
a command (a secrets manager), or a prompt on a terminal."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.errors import NoCredential, UsageError
from medvault.repository.keys import Credential, read_keyfile

if TYPE_CHECKING:
    from medvault.config import RepositorySettings


@dataclass(frozen=True)
class CredentialOptions:
    password_file: str | None = None
    password_command: str | None = None
    key_file: str | None = None


def _strip_newline(raw: bytes) -> bytes:
    return raw[:-1] if raw.endswith(b"\n") else raw


def _warn_if_open_to_others(path: str, what: str) -> None:
    """As ssh does for its keys: a secret file the group or others may read (or replace) is
    still used, with a warning, so a careless chmod does not stop the night's backup."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return  # the read that follows says what is wrong
    if mode & 0o077:
        sys.stderr.write(
            f"medvault: warning: {what} {path} is open to group or others (mode "
            f"{mode:04o}); make it private: chmod 600 {path}\n"
        )
        sys.stderr.flush()


def _keyfile(path: str) -> bytes:
    _warn_if_open_to_others(path, "key file")
    return read_keyfile(path)


def _from_file(path: str) -> bytes:
    _warn_if_open_to_others(path, "password file")
    try:
        with open(path, "rb") as handle:
            secret = _strip_newline(handle.read())
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}") from None
    if not secret:
        raise UsageError(f"password file {path} is empty")
    return secret


def _from_command(command: str, option: str) -> bytes:
    """`option` names where the command came from, for a command that cannot even be split."""
    import shlex
    import subprocess

    from medvault import childenv

    try:
        argv = shlex.split(command)
    except ValueError as exc:  # an unbalanced quote; never echo the command, it may hold a secret
        raise UsageError(f"{option}: cannot split it into words as a shell would: {exc}") from None
    if not argv:
        raise UsageError(f"{option} names no command")
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            check=False,
            timeout=60,
            stdin=None,
            env=childenv.for_password_command(),
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"password command could not run: {type(exc).__name__}") from None
    if done.returncode != 0:
        raise UsageError(f"password command failed with exit code {done.returncode}")
    secret = _strip_newline(done.stdout)
    if not secret:
        raise UsageError("password command printed nothing")
    return secret


def _prompt(text: str, confirm: bool, interactive: bool = True) -> bytes:
    if not interactive or not sys.stdin.isatty():
        raise NoCredential(
            "no passphrase given: set MEDVAULT_PASSWORD, or pass --password-file, "
            "--password-command or --key-file"
        )
    import getpass

    first = getpass.getpass(text)
    if confirm and getpass.getpass("enter it again: ") != first:
        raise UsageError("the passphrases did not match")
    if not first:
        raise UsageError("an empty passphrase is not allowed")
    return first.encode()


def get_credential(
    options: CredentialOptions,
    repo_settings: RepositorySettings | None = None,
    *,
    confirm: bool = False,
    interactive: bool = True,
) -> Credential:
    """Command-line options first, then the environment, then the config file, then a prompt
    (unless not `interactive`: then NoCredential)."""
    if options.key_file:
        return Credential(keyfile_secret=_keyfile(options.key_file), origin="--key-file")
    if options.password_file:
        return Credential(passphrase=_from_file(options.password_file), origin="--password-file")
    if options.password_command:
        secret = _from_command(options.password_command, "--password-command")
        return Credential(passphrase=secret, origin="command")
    from_environment = _from_environment("MEDVAULT_")
    if from_environment is not None:
        return from_environment
    configured = _from_settings(repo_settings)
    if configured is not None:
        return configured
    secret = _prompt("repository passphrase: ", confirm, interactive)
    return Credential(passphrase=secret, origin="prompt")


def _from_environment(prefix: str) -> Credential | None:
    """PREFIX + PASSWORD, PASSWORD_FILE, PASSWORD_COMMAND or KEY_FILE, the first one set."""
    env = os.environ
    if env.get(prefix + "PASSWORD"):
        return Credential(passphrase=env[prefix + "PASSWORD"].encode(), origin="env")
    if env.get(prefix + "PASSWORD_FILE"):
        path = env[prefix + "PASSWORD_FILE"]
        return Credential(passphrase=_from_file(path), origin=prefix + "PASSWORD_FILE")
    if env.get(prefix + "PASSWORD_COMMAND"):
        command = env[prefix + "PASSWORD_COMMAND"]
        secret = _from_command(command, prefix + "PASSWORD_COMMAND")
        return Credential(passphrase=secret, origin=prefix + "PASSWORD_COMMAND")
    if env.get(prefix + "KEY_FILE"):
        path = env[prefix + "KEY_FILE"]
        return Credential(keyfile_secret=_keyfile(path), origin=prefix + "KEY_FILE")
    return None


def _from_settings(repo_settings: RepositorySettings | None) -> Credential | None:
    """The key file or passphrase a repository's section in medvault.toml names, if any."""
    if repo_settings is None:
        return None
    if repo_settings.key_file:
        return Credential(keyfile_secret=_keyfile(repo_settings.key_file), origin="config")
    if repo_settings.password_file:
        return Credential(passphrase=_from_file(repo_settings.password_file), origin="config")
    if repo_settings.password_command:
        secret = _from_command(repo_settings.password_command, "password_command in medvault.toml")
        return Credential(passphrase=secret, origin="config")
    return None


def get_other_credential(
    repo_settings: RepositorySettings | None, *, interactive: bool = True
) -> Credential:
    """For a second repository in one command (copy's --from, init's --copy-keys-from): its
    own section's key file or password settings, then MEDVAULT_FROM_PASSWORD,
    MEDVAULT_FROM_PASSWORD_FILE, MEDVAULT_FROM_PASSWORD_COMMAND or MEDVAULT_FROM_KEY_FILE,
    then the usual places (the same
    passphrase for both is common)."""
    configured = _from_settings(repo_settings)
    if configured is not None:
        return configured
    from_environment = _from_environment("MEDVAULT_FROM_")
    if from_environment is not None:
        return from_environment
    return get_credential(CredentialOptions(), None, interactive=interactive)


@dataclass(frozen=True)
class ShellCredentials:
    """The CLI's (and cron's) credential source for a session: options first, then the
    environment, the repository's section of medvault.toml, and last a prompt on a
    terminal (see get_credential and get_other_credential), unless not `interactive`
    (what a query reading repositories on the side uses: it must never wait on a prompt)."""

    options: CredentialOptions
    interactive: bool = True

    def primary(self, settings: RepositorySettings | None) -> Credential:
        return get_credential(self.options, settings, interactive=self.interactive)

    def other(self, settings: RepositorySettings | None) -> Credential:
        return get_other_credential(settings, interactive=self.interactive)


def get_new_passphrase(password_file: str | None) -> Credential:
    """A new passphrase for `key add` / `key passwd`."""
    if password_file:
        return Credential(passphrase=_from_file(password_file), origin="--new-password-file")
    if os.environ.get("MEDVAULT_NEW_PASSWORD"):
        return Credential(passphrase=os.environ["MEDVAULT_NEW_PASSWORD"].encode(), origin="env")
    return Credential(passphrase=_prompt("new passphrase: ", confirm=True), origin="prompt")
