"""Passphrases, key files and key slots."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import MEDVAULT, PASSWORD, Cli, reopen
from medvault.errors import WrongPassphrase
from medvault.repository import keys
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository

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


# -- planted and damaged key slots ---------------------------------------------------------
# Anyone who can write to the store (an append-only one too) can add objects under keys/.
# Such a slot must never stop the real passphrase, nor make opening the repository costly.


def slot_documents(cli: Cli) -> dict[str, dict[str, object]]:
    with cli.backend() as backend:
        return {
            obj.name.split("/", 1)[1]: json.loads(backend.load(obj.name))
            for obj in backend.list("keys")
        }


def plant_slot(cli: Cli, body: dict[str, object] | bytes) -> str:
    """A slot written behind medvault's back, claiming to be older than every real one."""
    slot_id = secrets.token_hex(16)
    if isinstance(body, dict):
        body = json.dumps({**body, "created": "2001-01-01T00:00:00.000000+00:00"}).encode()
    with cli.backend() as backend:
        backend.store(f"keys/{slot_id}", body)
    return slot_id


def with_kdf(cli: Cli, **kdf: object) -> dict[str, object]:
    """A copy of the real slot with other KDF parameters."""
    real = next(iter(slot_documents(cli).values()))
    return {**real, "kdf": {**real["kdf"], **kdf}}  # type: ignore[dict-item]


EMPTY_SLOT: dict[str, object] = {
    "version": 1,
    "kind": "passphrase",
    "nonce": "",
    "wrapped": "",
    "kdf": {},
}


def run_within(cli: Cli, seconds: float, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MEDVAULT, *args], env=cli.env, capture_output=True, text=True, timeout=seconds
    )


def test_a_slot_asking_for_4_gib_x_64_passes_is_skipped_with_a_warning(
    initialized_cli: Cli,
) -> None:
    planted = plant_slot(
        initialized_cli, with_kdf(initialized_cli, memory_kib=4 << 20, iterations=64)
    )
    done = run_within(initialized_cli, 60, "snapshots")
    assert done.returncode == 0, done.stderr
    assert f"medvault: warning: key slot {planted} is unusable" in done.stderr
    assert "4194304 KiB of memory" in done.stderr


def test_a_slot_with_a_bad_salt_is_skipped_with_a_warning(initialized_cli: Cli) -> None:
    planted = plant_slot(initialized_cli, with_kdf(initialized_cli, salt="not base64!"))
    done = initialized_cli("snapshots")
    assert "0 snapshot(s)" in done.stdout
    assert f"key slot {planted} is unusable (damaged: kdf salt is not base64)" in done.stderr


def test_a_slot_of_garbage_is_skipped_with_a_warning(initialized_cli: Cli) -> None:
    planted = plant_slot(initialized_cli, b"\x00{not json at all")
    done = initialized_cli("snapshots")
    assert "0 snapshot(s)" in done.stdout
    assert f"key slot {planted} is unusable (damaged: it is not JSON)" in done.stderr


def test_key_list_marks_unusable_slots_and_key_remove_removes_them(initialized_cli: Cli) -> None:
    planted = plant_slot(initialized_cli, with_kdf(initialized_cli, algorithm="scrypt"))
    listed = {s["id"]: s for s in slots(initialized_cli)}
    assert listed[planted]["usable"] is False
    assert listed[planted]["problem"] == "unsupported: KDF 'scrypt' is not supported"
    assert "UNUSABLE (unsupported" in initialized_cli("key", "list").stdout
    real = next(i for i, s in listed.items() if s["usable"])
    done = initialized_cli("key", "remove", real, check=False)
    assert done.returncode == 2 and "last key slot" in done.stderr, "the planted one opens nothing"
    initialized_cli("key", "remove", planted)
    assert [s["id"] for s in slots(initialized_cli)] == [real]


def test_a_wrong_passphrase_beside_a_planted_slot_is_still_a_wrong_passphrase(
    initialized_cli: Cli,
) -> None:
    plant_slot(initialized_cli, with_kdf(initialized_cli, lanes=0))
    done = initialized_cli("snapshots", env={"MEDVAULT_PASSWORD": "not it"}, check=False)
    assert done.returncode == 11
    assert "wrong passphrase" in done.stderr and "1 unusable slot(s) skipped" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_no_usable_slot_says_so_and_how_to_recover(initialized_cli: Cli) -> None:
    (real,) = slot_documents(initialized_cli)
    initialized_cli.damage(f"keys/{real}", lambda data: data[: len(data) // 2])
    plant_slot(initialized_cli, EMPTY_SLOT)
    done = initialized_cli("snapshots", check=False)
    assert done.returncode == 13
    assert done.stderr.startswith("medvault: error: no usable key slot: keys/")
    assert f"keys/{real} (damaged: it is not JSON)" in done.stderr
    assert "restore keys/ from a copy" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_slots_of_a_newer_medvault_alone_ask_for_an_upgrade(initialized_cli: Cli) -> None:
    (real,) = slot_documents(initialized_cli)
    initialized_cli.damage(
        f"keys/{real}", lambda data: data.replace(b'"version": 1', b'"version": 2')
    )
    done = initialized_cli("snapshots", check=False)
    assert done.returncode == 14
    assert "no usable key slot" in done.stderr and "upgrade medvault" in done.stderr


def test_costly_planted_slots_are_tried_after_the_real_one_and_within_a_budget(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    derivations: list[int] = []
    real_derive = keys._derive

    def counted(passphrase: bytes, kdf: dict[str, Any]) -> bytes:
        derivations.append(int(kdf["memory_kib"]) * int(kdf["iterations"]))
        return real_derive(passphrase, kdf)

    monkeypatch.setattr(keys, "_derive", counted)
    (real,) = Repository.read_key_slots(repo.backend)
    costly = {**json.loads(real.to_json()), "created": "2001-01-01T00:00:00.000000+00:00"}
    costly["kdf"] = {**real.kdf, "memory_kib": 65536, "iterations": 64}  # 4 GiB-passes, allowed
    for _ in range(5):
        repo.backend.store(f"keys/{secrets.token_hex(16)}", json.dumps(costly).encode())

    reopen(repo)
    assert derivations == [keys.kdf_work(real.kdf)], "the real, cheaper slot first, and alone"

    derivations.clear()
    with pytest.raises(WrongPassphrase, match="2 passphrase slot"):
        Repository.open(repo.backend, Credential(passphrase=b"not it"))
    assert sum(derivations) <= keys.KDF_WORK_BUDGET
    assert len(derivations) == 4
