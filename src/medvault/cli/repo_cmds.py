"""Repository-level commands: init, key, check, unlock."""

from __future__ import annotations

import os

import typer

from medvault.cli.context import human_bytes, obtain, print_json, progress_bar, warn
from medvault.credentials import get_credential, get_new_passphrase
from medvault.errors import IntegrityError, RepositoryExists, UsageError
from medvault.repository.keys import Credential, write_keyfile

key_app = typer.Typer(help="Manage key slots: passphrases and key files.", no_args_is_help=True)


def _new_keyfile(path: str) -> Credential:
    if os.path.exists(path):
        raise UsageError(f"{path} already exists; refusing to overwrite a key file")
    try:
        return Credential(keyfile_secret=write_keyfile(path), origin="new key file")
    except OSError as exc:
        raise UsageError(f"cannot write key file {path}: {exc.strerror}") from None


def init(
    ctx: typer.Context,
    new_key_file: str | None = typer.Option(
        None,
        "--new-key-file",
        help="Protect the repository with a new key file written here instead of a passphrase.",
    ),
    label: str = typer.Option("", "--label", help="A note on the first key slot."),
    copy_keys_from: str | None = typer.Option(
        None,
        "--copy-keys-from",
        metavar="REPO",
        help="Share this repository's key material (a name or path/URL), so that `copy` "
        "moves packs without decrypting them.",
    ),
    group: str | None = typer.Option(
        None,
        "--group",
        metavar="NAME",
        help="Let this group read a local repository (0750 directories, 0640 files); "
        "by default it is its owner's alone (0700, 0600).",
    ),
) -> None:
    """Create a new, empty repository."""
    from medvault.backends import open_backend
    from medvault.backends.local import LocalBackend
    from medvault.repository.repo import Repository

    cli = obtain(ctx)
    url, repo_settings = cli.repository_target()
    backend = open_backend(url, repo_settings)
    if group is not None:
        if not isinstance(backend, LocalBackend):
            raise UsageError("--group applies to local repositories; on S3 use bucket policies")
        backend.share_with_group(group)
    shared = cli.open(selector=copy_keys_from, other=True) if copy_keys_from else None
    # Before a passphrase is asked for or a key file written: neither could serve a
    # repository that is already there, and a key file left behind would belong to nothing.
    if new_key_file and os.path.exists(new_key_file):
        raise UsageError(f"{new_key_file} already exists; refusing to overwrite a key file")
    if backend.exists("config"):
        raise RepositoryExists(
            f"{backend.url} already exists and is not empty: it holds a medvault repository"
        )
    if new_key_file:
        credential = _new_keyfile(new_key_file)
    else:
        credential = get_credential(cli.credentials, repo_settings, confirm=True)
    try:
        repo = Repository.init(
            backend,
            credential,
            label=label,
            retention_period=cli.retention_period(None),
            like=shared,
        )
    except BaseException:
        if new_key_file:
            os.unlink(new_key_file)  # ours (created exclusively), and it opens nothing
        raise
    print(f"created repository {repo.config.repo_id} at {repo.url}")
    if new_key_file:
        print(
            f"key file written to {new_key_file}: keep a copy offline; without it the data is lost"
        )


@key_app.command("list")
def key_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the key slots."""
    repo = obtain(ctx).open()
    slots = repo.key_slots()
    if as_json:
        print_json(
            [
                {
                    "id": s.slot_id,
                    "kind": s.kind,
                    "created": s.created,
                    "host": s.host,
                    "user": s.user,
                    "label": s.label,
                    "current": repo.slot is not None and s.slot_id == repo.slot.slot_id,
                    "usable": s.usable,
                    "problem": s.describe_problem() if not s.usable else None,
                }
                for s in slots
            ]
        )
        return
    for s in slots:
        mark = "*" if repo.slot is not None and s.slot_id == repo.slot.slot_id else " "
        line = f"{mark} {s.slot_id}  {s.kind:<10}  {s.created[:19]}  {s.user}@{s.host}  {s.label}"
        print(line if s.usable else f"{line}  UNUSABLE ({s.describe_problem()})")


@key_app.command("add")
def key_add(
    ctx: typer.Context,
    new_key_file: str | None = typer.Option(
        None, "--new-key-file", help="Add a slot for a new key file written here."
    ),
    new_password_file: str | None = typer.Option(
        None, "--new-password-file", help="Read the new passphrase from this file."
    ),
    label: str = typer.Option("", "--label"),
) -> None:
    """Add a key slot (a new passphrase, or a new key file)."""
    repo = obtain(ctx).open()
    credential = (
        _new_keyfile(new_key_file) if new_key_file else get_new_passphrase(new_password_file)
    )
    slot = repo.add_key(credential, label)
    print(f"added {slot.kind} key slot {slot.slot_id}")


@key_app.command("remove")
def key_remove(ctx: typer.Context, slot_id: str = typer.Argument(..., metavar="ID")) -> None:
    """Remove a key slot (never the last one)."""
    repo = obtain(ctx).open()
    slot = repo.find_key(slot_id)
    repo.remove_key(slot.slot_id)
    print(f"removed key slot {slot.slot_id}")


@key_app.command("passwd")
def key_passwd(
    ctx: typer.Context,
    new_password_file: str | None = typer.Option(
        None, "--new-password-file", help="Read the new passphrase from this file."
    ),
) -> None:
    """Change the passphrase of the slot used to open the repository."""
    repo = obtain(ctx).open()
    if repo.slot is None or repo.slot.kind != "passphrase":
        raise UsageError("this repository was opened with a key file; open it with a passphrase")
    slot = repo.change_passphrase(get_new_passphrase(new_password_file))
    print(f"passphrase changed; key slot is now {slot.slot_id}")


def check(
    ctx: typer.Context,
    read_data: bool = typer.Option(
        False, "--read-data", help="Decrypt and verify every blob of every pack."
    ),
    subset: str | None = typer.Option(
        None, "--read-data-subset", metavar="N%", help="Verify a random N% of packs."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify the repository's structure, and with --read-data its every byte."""
    fraction = None
    if subset is not None:
        try:
            fraction = float(subset.rstrip("%"))
        except ValueError:
            raise UsageError(
                f"--read-data-subset takes a percentage like 10%, not {subset!r}"
            ) from None
        if not 0 < fraction <= 100:
            raise UsageError("--read-data-subset must be between 0% and 100%")
    from medvault.repository.check import check_repository

    repo = obtain(ctx).open()
    with (
        repo.lock(exclusive=False, purpose="check"),
        progress_bar("verifying", None, not as_json) as advance,
    ):
        report = check_repository(repo, read_data=read_data, subset=fraction, on_progress=advance)
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "errors": report.errors,
                "notes": report.notes,
                "affected": report.affected,
                "snapshots": report.snapshots,
                "packs": report.packs,
                "packs_read": report.packs_read,
                "blobs_read": report.blobs_read,
                "bytes_read": report.bytes_read,
                "wal_files": report.wal_files,
                "wal_read": report.wal_read,
            }
        )
    else:
        for error in report.errors:
            print(f"error: {error}")
        for note in report.notes:
            print(f"note: {note}")
        for snapshot_id, paths in report.affected.items():
            print(f"snapshot {snapshot_id[:12]}: {len(paths)} damaged path(s)")
        read = ""
        if report.packs_read:
            read = f", read {report.packs_read} packs ({human_bytes(report.bytes_read)})"
        if report.wal_read:
            read += f", {report.wal_read} WAL files"
        wal = f", {report.wal_files} WAL files" if report.wal_files else ""
        verdict = "no errors found" if report.ok else f"{len(report.errors)} error(s) found"
        print(f"checked {report.snapshots} snapshots, {report.packs} packs{wal}{read}: {verdict}")
    if not report.ok:
        raise typer.Exit(IntegrityError.exit_code)


def unlock(
    ctx: typer.Context,
    remove_all: bool = typer.Option(
        False, "--remove-all", help="Remove every lock, not only stale ones."
    ),
) -> None:
    """Remove locks left by processes that are gone (their process ended on this host, or
    they were not refreshed for their lease by the store's clock) and objects under locks/
    that are not valid locks."""
    repo = obtain(ctx).open()
    result = repo.unlock(remove_all=remove_all)
    for description in result.removed:
        print(f"removed {description}")
    if not result.removed:
        print("no stale locks")
    for description in result.remaining:
        warn(f"still held: {description}")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.add_typer(key_app, name="key")
    app.command()(check)
    app.command()(unlock)
