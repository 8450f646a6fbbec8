"""Repository-level commands: init, key, check, unlock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from medvault.cli.context import human_bytes, obtain, print_json, warn
from medvault.credentials import get_credential, get_new_passphrase
from medvault.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from medvault.service.keys import NewCredential

key_app = typer.Typer(help="Manage key slots: passphrases and key files.", no_args_is_help=True)


def _new_passphrase(password_file: str | None) -> NewCredential:
    """Asked for only when the service needs it (after the checks that could refuse)."""
    return lambda _settings: get_new_passphrase(password_file)


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
    from medvault.service.admin import InitOptions
    from medvault.service.admin import init as init_repository

    cli = obtain(ctx)
    created = init_repository(
        cli.session,
        InitOptions(
            credential=lambda settings: get_credential(cli.credentials, settings, confirm=True),
            new_key_file=new_key_file,
            label=label,
            copy_keys_from=copy_keys_from,
            group=group,
        ),
    )
    print(f"created repository {created.repo_id} at {created.url}")
    if new_key_file:
        print(
            f"key file written to {new_key_file}: keep a copy offline; without it the data is lost"
        )


@key_app.command("list")
def key_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the key slots."""
    from medvault.service.keys import key_list as list_slots

    slots = list_slots(obtain(ctx).session).slots
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
                    "current": s.current,
                    "usable": s.usable,
                    "problem": s.problem,
                }
                for s in slots
            ]
        )
        return
    for s in slots:
        mark = "*" if s.current else " "
        line = f"{mark} {s.slot_id}  {s.kind:<10}  {s.created[:19]}  {s.user}@{s.host}  {s.label}"
        print(line if s.usable else f"{line}  UNUSABLE ({s.problem})")


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
    from medvault.service.keys import KeyAddOptions
    from medvault.service.keys import key_add as add_slot

    options = KeyAddOptions(
        credential=_new_passphrase(new_password_file), new_key_file=new_key_file, label=label
    )
    slot = add_slot(obtain(ctx).session, options)
    print(f"added {slot.kind} key slot {slot.slot_id}")


@key_app.command("remove")
def key_remove(ctx: typer.Context, slot_id: str = typer.Argument(..., metavar="ID")) -> None:
    """Remove a key slot (never the last one)."""
    from medvault.service.keys import key_remove as remove_slot

    removed = remove_slot(obtain(ctx).session, slot_id)
    print(f"removed key slot {removed.slot_id}")


@key_app.command("passwd")
def key_passwd(
    ctx: typer.Context,
    new_password_file: str | None = typer.Option(
        None, "--new-password-file", help="Read the new passphrase from this file."
    ),
) -> None:
    """Change the passphrase of the slot used to open the repository."""
    from medvault.service.keys import key_passwd as change_passphrase

    changed = change_passphrase(obtain(ctx).session, _new_passphrase(new_password_file))
    print(f"passphrase changed; key slot is now {changed.slot_id}")


def check(
    ctx: typer.Context,
    snapshot: str | None = typer.Argument(
        None,
        metavar="[SNAP]",
        help="Check this snapshot only (an id, latest, verified, random:30d, ...).",
    ),
    read_data: bool = typer.Option(
        False, "--read-data", help="Decrypt and verify every blob of every pack."
    ),
    subset: str | None = typer.Option(
        None, "--read-data-subset", metavar="N%", help="Verify a random N% of packs."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify the repository's structure, and with --read-data its every byte (or one
    snapshot's)."""
    fraction = None
    if subset is not None:
        try:
            fraction = float(subset.rstrip("%"))
        except ValueError:
            raise UsageError(
                f"--read-data-subset takes a percentage like 10%, not {subset!r}"
            ) from None
    from medvault.cli.progress import progress_once_started
    from medvault.service.check import CheckOptions
    from medvault.service.check import check as check_repository

    options = CheckOptions(read_data=read_data, subset=fraction, snapshot=snapshot)
    with progress_once_started("verifying", not as_json) as advance:
        report = check_repository(obtain(ctx).session, options, on_progress=advance)
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "snapshot": report.checked,
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
        what = (
            f"snapshot {report.checked[:12]}" if report.checked else f"{report.snapshots} snapshots"
        )
        print(f"checked {what}, {report.packs} packs{wal}{read}: {verdict}")
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
    from medvault.service.admin import unlock as remove_locks

    result = remove_locks(obtain(ctx).session, remove_all=remove_all)
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
