"""Passphrases, key files and key slots."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from conftest import PASSWORD, Cli

BACKENDS = ("local", "s3")


def slots(cli: Cli, **env: str) -> list[dict[str, object]]:
    return json.loads(cli("key", "list", "--json", env=env).stdout)


def test_wrong_passphrase_is_one_line_with_exit_11(initialized_cli: Cli) -> None:
    done = initialized_cli("snapshots", env={"MEDVAULT_PASSWORD": "not it"}, check=False)
    assert done.returncode == 11
    assert done.stderr.strip().count("\n") == 0
    assert "wrong passphrase" in done.stderr
    assert "Traceback" not in done.stderr


def test_passphrase_from_a_file(cli: Cli, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from a file\n")
    cli("--password-file", str(secret), "init", env={"MEDVAULT_PASSWORD": ""})
    done = cli("snapshots", env={"MEDVAULT_PASSWORD": "from a file"})
    assert "0 snapshot(s)" in done.stdout


def test_passphrase_from_a_command(cli: Cli, tmp_path: Path) -> None:
    cli("--password-command", "echo from-a-vault", "init", env={"MEDVAULT_PASSWORD": ""})
    cli("snapshots", env={"MEDVAULT_PASSWORD": "from-a-vault"})
    failing = cli(
        "--password-command", "false", "snapshots", env={"MEDVAULT_PASSWORD": ""}, check=False
    )
    assert failing.returncode == 2
    assert "password command failed" in failing.stderr


def test_no_passphrase_without_a_terminal_says_how_to_give_one(cli: Cli) -> None:
    cli("init")
    done = cli("snapshots", env={"MEDVAULT_PASSWORD": ""}, check=False)
    assert done.returncode == 11
    assert "MEDVAULT_PASSWORD" in done.stderr


def test_passphrase_never_appears_in_output_or_key_slots(initialized_cli: Cli) -> None:
    done = initialized_cli("key", "list", "--json")
    assert PASSWORD not in done.stdout + done.stderr
    with initialized_cli.backend() as backend:
        slots = [backend.load(obj.name) for obj in backend.list("keys")]
    assert slots and not any(PASSWORD.encode() in slot for slot in slots)


def test_key_file_instead_of_a_passphrase(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "repo.key"
    cli("init", "--new-key-file", str(key), env={"MEDVAULT_PASSWORD": ""})
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    listed = json.loads(
        cli("--key-file", str(key), "key", "list", "--json", env={"MEDVAULT_PASSWORD": ""}).stdout
    )
    assert [s["kind"] for s in listed] == ["keyfile"]
    wrong = tmp_path / "other.key"
    cli("--repo", str(tmp_path / "other"), "init", "--new-key-file", str(wrong))
    refused = cli("--key-file", str(wrong), "snapshots", env={"MEDVAULT_PASSWORD": ""}, check=False)
    assert refused.returncode == 11
    assert "wrong key file" in refused.stderr


def test_several_slots_each_open_the_repository(initialized_cli: Cli, tmp_path: Path) -> None:
    initialized_cli("key", "add", "--label", "dr-smith", env={"MEDVAULT_NEW_PASSWORD": "second"})
    key = tmp_path / "escrow.key"
    initialized_cli("key", "add", "--new-key-file", str(key), "--label", "escrow")
    assert len(slots(initialized_cli)) == 3
    assert len(slots(initialized_cli, MEDVAULT_PASSWORD="second")) == 3
    initialized_cli("--key-file", str(key), "snapshots", env={"MEDVAULT_PASSWORD": ""})


def test_removing_a_slot_revokes_its_passphrase(initialized_cli: Cli) -> None:
    initialized_cli("key", "add", env={"MEDVAULT_NEW_PASSWORD": "temporary"})
    temporary = next(
        s for s in slots(initialized_cli, MEDVAULT_PASSWORD="temporary") if s["current"]
    )
    initialized_cli("key", "remove", str(temporary["id"])[:8])
    done = initialized_cli("snapshots", env={"MEDVAULT_PASSWORD": "temporary"}, check=False)
    assert done.returncode == 11


def test_removing_the_last_slot_is_refused(initialized_cli: Cli) -> None:
    only = slots(initialized_cli)[0]
    done = initialized_cli("key", "remove", str(only["id"]), check=False)
    assert done.returncode == 2
    assert "last key slot" in done.stderr
    assert len(slots(initialized_cli)) == 1


def test_passwd_changes_the_passphrase_and_keeps_the_data(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    data = make_tree({"a.txt": b"kept"})
    initialized_cli("backup", str(data))
    initialized_cli("key", "passwd", env={"MEDVAULT_NEW_PASSWORD": "rotated"})
    old = initialized_cli("snapshots", check=False)
    assert old.returncode == 11
    initialized_cli(
        "restore", "latest", "--target", str(tmp_path / "out"), env={"MEDVAULT_PASSWORD": "rotated"}
    )
    assert (tmp_path / "out" / str(data).lstrip("/") / "a.txt").read_bytes() == b"kept"


def test_there_is_no_way_to_put_a_passphrase_on_the_command_line(cli: Cli) -> None:
    done = cli("--password", "x", "init", check=False)
    assert done.returncode == 2
    assert "No such option" in done.stderr


def test_init_refuses_an_existing_repository(initialized_cli: Cli) -> None:
    done = initialized_cli("init", check=False)
    assert done.returncode == 10
    assert "already exists" in done.stderr


def test_key_files_are_never_overwritten(initialized_cli: Cli, tmp_path: Path) -> None:
    existing = tmp_path / "existing.key"
    existing.write_text("precious")
    done = initialized_cli("key", "add", "--new-key-file", str(existing), check=False)
    assert done.returncode == 2
    assert existing.read_text() == "precious"
    assert os.path.exists(existing)


def test_passphrase_file_from_the_environment_for_cron(cli: Cli, tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("cron secret\n")
    env = {"MEDVAULT_PASSWORD": "", "MEDVAULT_PASSWORD_FILE": str(secret)}
    cli("init", env=env)
    assert "0 snapshot(s)" in cli("snapshots", env=env).stdout
