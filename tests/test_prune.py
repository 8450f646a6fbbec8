"""prune: what no snapshot needs goes (at once on a quiet repository, in a later run when a
backup was running), and never what a backup running beside it depends on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.test_concurrency import wait_for

from conftest import Cli, tree_digest

BACKENDS = ("local", "s3")

MiB = 1024 * 1024


def prune(cli: Cli, *args: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(cli("prune", "--young", "0s", "--json", *args).stdout)
    return result


def pack_names(cli: Cli) -> set[str]:
    return set(cli.objects("data"))


def latest(cli: Cli) -> str:
    return str(json.loads(cli("snapshots", "--json").stdout)[-1]["id"])


def backup(cli: Cli, path: Path) -> str:
    return str(json.loads(cli("backup", str(path), "--json").stdout)["snapshot"])


def restores_as(cli: Cli, snapshot: str, source: Path, target: Path) -> bool:
    cli("restore", snapshot, "--target", str(target))
    return tree_digest(target / str(source).lstrip("/")) == tree_digest(source)


def test_unused_data_goes_in_one_run_on_a_quiet_repository(
    initialized_cli: Cli, make_tree, tmp_path
) -> None:
    cli = initialized_cli
    data = make_tree({"scan-2019.dcm": os.urandom(20 * MiB), "note.txt": b"kept\n" * 1000})
    old = backup(cli, data)
    (data / "scan-2019.dcm").unlink()
    (data / "scan-2026.dcm").write_bytes(os.urandom(3 * MiB))
    new = backup(cli, data)
    before = pack_names(cli)

    dry = prune(cli, "--dry-run")
    assert dry["condemned_packs"] == 0, "the old snapshot still needs everything"
    cli("forget", old)
    # No backup is running: nothing can depend on the condemned packs, both phases run now.
    first = prune(cli)
    assert first["condemned_packs"] >= 1 and first["deleted_packs"] == first["condemned_packs"]
    assert int(str(first["freed_bytes"])) >= 20 * MiB and not first["waiting"]
    assert not cli.objects("prune/condemned"), "the record went with its packs"
    assert len(pack_names(cli)) < len(before)
    again = prune(cli)
    assert again["condemned_packs"] == 0 and again["deleted_packs"] == 0
    cli("check", "--read-data")
    assert restores_as(cli, new, data, tmp_path / "out")


def test_mostly_unused_packs_are_repacked(initialized_cli: Cli, make_tree, tmp_path) -> None:
    cli = initialized_cli
    head = os.urandom(6 * MiB)
    data = make_tree({"study.dcm": head + os.urandom(18 * MiB)})
    old = backup(cli, data)
    # The study is re-exported: its first quarter is unchanged, the rest new. The old packs
    # (chunks of the whole file, mixed) are then about three quarters unused.
    (data / "study.dcm").write_bytes(head + os.urandom(18 * MiB))
    new = backup(cli, data)
    cli("forget", old)
    first = prune(cli)
    assert first["repacked_packs"] >= 1
    assert 0 < int(str(first["repacked_bytes"])) <= 6 * MiB + MiB
    assert first["deleted_packs"] >= 1 and first["reprieved"] == 0, "the copies let them go"
    cli("check", "--read-data")
    assert restores_as(cli, new, data, tmp_path / "out")


def test_a_backup_running_throughout_a_prune_keeps_what_it_depends_on(
    initialized_cli: Cli, make_tree, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    cli = initialized_cli
    data = make_tree({"a-archive.dcm": os.urandom(12 * MiB)})
    old = backup(cli, data)
    cli("forget", old)  # a-archive.dcm's packs are now needed by no snapshot...
    (data / "z-filler.bin").write_bytes(os.urandom(160 * MiB))
    packs_before = pack_names(cli)
    running = cli.popen("backup", str(data), "--json")  # ...but this backup will reuse them
    processes.append(running)
    # Stopped once it writes packs of the filler: it has deduplicated a-archive.dcm (walked
    # first) against the old packs by then, with an index read before any prune.
    with cli.backend() as backend:
        wait_for(
            running,
            lambda: (
                len({o.name for o in backend.list("data")} - packs_before) >= 1
                and any(True for _ in backend.list("locks"))
            ),
        )
    os.kill(running.pid, signal.SIGSTOP)  # a slow backup, mid-way
    assert not cli.objects("snapshots"), "stopped before it finished"

    first = prune(cli)
    assert first["condemned_packs"] >= 1 and first["deleted_packs"] == 0 and first["waiting"]
    second = prune(cli)
    assert second["deleted_packs"] == 0 and second["waiting"], (
        f"it waits for the older backup: {second}"
    )

    os.kill(running.pid, signal.SIGCONT)
    out, err = running.communicate(timeout=300)
    assert running.returncode == 0, err
    snapshot = json.loads(out)["snapshot"]
    # Before committing, the backup read the condemned records again and stored anew what it
    # reused from those packs: they can go now.
    third = prune(cli)
    assert third["deleted_packs"] >= 1 and third["reprieved"] == 0, third
    cli("check", "--read-data")
    assert restores_as(cli, snapshot, data, tmp_path / "out")


def test_prune_keeps_locked_packs_and_says_so(tmp_path: Path, make_tree) -> None:
    repo = tmp_path / "vault"
    config = tmp_path / "medvault.toml"
    config.write_text(f'[repository.vault]\nurl = "{repo}"\nappend_only = true\n')
    cli = Cli("vault", tmp_path, repo)
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    data = make_tree({"x.bin": os.urandom(2 * MiB)})
    backup(cli, data)
    cli.env["MEDVAULT_CONFIG"] = str(tmp_path / "plain.toml")
    (tmp_path / "plain.toml").write_text(f'[repository.vault]\nurl = "{repo}"\n')
    cli("forget", latest(cli))
    cli.env["MEDVAULT_CONFIG"] = str(config)
    result = prune(cli)
    assert result["kept_locked"] >= 1 and result["condemned_packs"] == 0
    assert "locked against deletion" in cli("prune", "--young", "0s").stdout


def test_subtrees_shared_by_snapshots_keep_their_data(
    initialized_cli: Cli, make_tree, tmp_path: Path
) -> None:
    """Prune reads a tree shared by several snapshots once; what it holds stays needed."""
    cli = initialized_cli
    data = make_tree(
        {
            "2024/cardiology/echo.dcm": os.urandom(3 * MiB),
            "2024/oncology/ct.dcm": os.urandom(3 * MiB),
            "2025/letters/referral.txt": b"Please see.\n" * 4000,
        }
    )
    first = backup(cli, data)
    (data / "2025" / "letters" / "referral.txt").write_bytes(os.urandom(2 * MiB))
    second = backup(cli, data)
    (data / "2025" / "letters" / "discharge.txt").write_bytes(os.urandom(MiB))
    third = backup(cli, data)
    cli("forget", first)
    result = prune(cli)
    assert result["deleted_packs"] >= 1, "the first letter's data went"
    cli("check", "--read-data")
    for number, snapshot in enumerate((second, third)):
        target = tmp_path / f"out{number}"
        cli("restore", snapshot, "--target", str(target))
        restored = target / str(data).lstrip("/")
        assert (restored / "2024" / "oncology" / "ct.dcm").read_bytes() == (
            data / "2024" / "oncology" / "ct.dcm"
        ).read_bytes()


def test_a_condemned_record_copied_under_another_name_is_rejected(
    make_tree, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    cli = Cli(tmp_path / "repo", tmp_path)  # local only: the record is the point, not the store
    cli("init")
    data = make_tree({"old.dcm": os.urandom(4 * MiB)})
    old = backup(cli, data)
    cli("forget", old)
    (data / "old.dcm").unlink()
    (data / "big.bin").write_bytes(os.urandom(200 * MiB))
    running = cli.popen("backup", str(data))  # its lock keeps the condemned record waiting
    processes.append(running)
    with cli.backend() as backend:
        wait_for(running, lambda: any(True for _ in backend.list("locks")))
    os.kill(running.pid, signal.SIGSTOP)
    assert prune(cli)["waiting"]
    (record,) = cli.objects("prune/condemned")
    replayed = record[:-3] + ("000" if not record.endswith("000") else "001")
    with cli.backend() as backend:
        backend.store(replayed, backend.load(record))

    checked = cli("check", check=False)
    assert checked.returncode == 13
    assert f"record {replayed} does not open under its name" in checked.stdout
    assert f"prune record {replayed} is unreadable; ignored" in checked.stderr
    assert f"prune record {record} " not in checked.stderr
    os.kill(running.pid, signal.SIGCONT)
    assert running.wait(timeout=300) == 0
