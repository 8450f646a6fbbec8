"""Creating a repository, and clearing the locks of processes that are gone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvault.errors import RepositoryExists, UsageError
from medvault.service.keys import NewCredential, new_credential, new_keyfile

if TYPE_CHECKING:
    from medvault.repository.keys import Credential
    from medvault.service.session import Session


@dataclass(frozen=True)
class InitOptions:
    # The first slot's passphrase, unless new_key_file is given.
    credential: Credential | NewCredential | None = None
    new_key_file: str | None = None  # write a new key file here; it opens the repository
    label: str = ""  # a note on the first key slot
    copy_keys_from: str | None = None  # share this repository's keys (a name or path/URL)
    group: str | None = None  # let this group read a local repository


@dataclass(frozen=True)
class InitResult:
    repo_id: str
    url: str
    slot_id: str
    new_key_file: str | None


@dataclass(frozen=True)
class UnlockResult:
    removed: tuple[str, ...]  # descriptions of the locks removed
    remaining: tuple[str, ...]  # of the locks still held by live processes


def init(session: Session, options: InitOptions) -> InitResult:
    """Create a new, empty repository at the session's repository."""
    from medvault.backends import open_backend
    from medvault.backends.local import LocalBackend
    from medvault.repository.repo import Repository

    with session.run("init") as run:
        url, repo_settings = session.repository_target()
        run.repository = url
        backend = open_backend(url, repo_settings)
        if options.group is not None:
            if not isinstance(backend, LocalBackend):
                raise UsageError("--group applies to local repositories; on S3 use bucket policies")
            backend.share_with_group(options.group)
        shared = (
            session.open(selector=options.copy_keys_from, other=True)
            if options.copy_keys_from
            else None
        )
        new_key_file = options.new_key_file
        # Before a passphrase is asked for or a key file written: neither could serve a
        # repository that is already there, and a key file left behind would belong to nothing.
        if new_key_file and os.path.exists(new_key_file):
            raise UsageError(f"{new_key_file} already exists; refusing to overwrite a key file")
        if backend.exists("config"):
            raise RepositoryExists(
                f"{backend.url} already exists and is not empty: it holds a medvault repository"
            )
        credential = (
            new_keyfile(new_key_file)
            if new_key_file
            else new_credential(options.credential, repo_settings)
        )
        try:
            repo = Repository.init(
                backend,
                credential,
                label=options.label,
                retention_period=session.retention_period(None),
                like=shared,
            )
        except BaseException:
            if new_key_file:
                os.unlink(new_key_file)  # ours (created exclusively), and it opens nothing
            raise
        session.adopt(repo)  # its first audit record is this init's
        slot_id = repo.slot.slot_id if repo.slot is not None else ""
        run.details.update(repo_id=repo.config.repo_id, added_slot=slot_id)
        if shared is not None:
            run.details["keys_shared_with"] = shared.url
        if options.group is not None:
            run.details["group"] = options.group
        return InitResult(repo.config.repo_id, repo.url, slot_id, new_key_file)


def unlock(session: Session, *, remove_all: bool = False) -> UnlockResult:
    """Remove locks left by processes that are gone, and objects under locks/ that are not
    valid locks; with remove_all, every lock."""
    with session.run("unlock") as run:
        repo = session.open()
        run.repository = repo.url
        result = repo.unlock(remove_all=remove_all)
        run.details.update(
            remove_all=remove_all, removed=list(result.removed), remaining=list(result.remaining)
        )
        return UnlockResult(tuple(result.removed), tuple(result.remaining))
