"""Hooks of a source (`[source.NAME.hooks]`): real commands around real backups and restores,
with a minimal environment, their output and exit codes in the run record, a failed `before`
hook failing the run before anything is read, and `after` hooks that always run."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import PASSWORD, Cli
from medvault.config import RepositorySettings
from medvault.repository.keys import Credential
from medvault.service.backup import FilesBackupOptions, backup_files
from medvault.service.runs import Caller, RunRecord
from medvault.service.session import Session


class Given:
    def primary(self, settings: RepositorySettings | None) -> Credential:
        return Credential(passphrase=PASSWORD.encode())

    def other(self, settings: RepositorySettings | None) -> Credential:
        return Credential(passphrase=PASSWORD.encode())


class Kept:
    def __init__(self) -> None:
        self.records: list[RunRecord] = []

    def run_ended(self, record: RunRecord) -> None:
        self.records.append(record)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / "hooks" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def setup(tmp_path: Path, data: Path, hooks: str) -> Cli:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.main]\nurl = "{tmp_path / "repo"}"\n'
        f'[source.letters]\nkind = "files"\npaths = ["{data}"]\n'
        f"[source.letters.hooks]\n{hooks}\n"
    )
    cli = Cli("main", tmp_path, tmp_path / "repo")
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    return cli


def session(tmp_path: Path, kept: Kept) -> Session:
    return Session(
        credentials=Given(),
        caller=Caller.this_process("cli"),
        config=str(tmp_path / "medvault.toml"),
        observers=[kept],
        state_dir=tmp_path / "medvault-state",
    )


def environment(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def snapshots(cli: Cli) -> list[str]:
    return [s["id"] for s in json.loads(cli("snapshots", "--json").stdout)]


def test_before_and_after_hooks_run_around_a_backup_without_medvaults_secrets(
    tmp_path: Path, make_tree
) -> None:
    data = make_tree({"letter.txt": b"Dear colleague"})
    out = tmp_path / "out"
    out.mkdir()
    before = script(tmp_path, "before", f"env > {out}/before.env; ls {tmp_path / 'repo'}/data")
    after = script(tmp_path, "after", f"env > {out}/after.env")
    cli = setup(tmp_path, data, f'before = ["{before}"]\nafter = ["{after}"]')
    cli.env["PGPASSWORD"] = "pg-secret-71"
    cli("backup", "letters")
    (snap,) = snapshots(cli)
    seen = environment(out / "before.env")
    assert seen["MEDVAULT_HOOK"] == "before" and seen["MEDVAULT_SOURCE"] == "letters"
    assert "MEDVAULT_SNAPSHOT" not in seen and "MEDVAULT_STATUS" not in seen
    assert PASSWORD not in (out / "before.env").read_text()
    assert not {"MEDVAULT_PASSWORD", "MEDVAULT_CONFIG", "MEDVAULT_REPOSITORY", "PGPASSWORD"} & set(
        seen
    )
    seen = environment(out / "after.env")
    assert seen["MEDVAULT_HOOK"] == "after" and seen["MEDVAULT_STATUS"] == "ok"
    assert seen["MEDVAULT_SNAPSHOT"] == snap and seen["MEDVAULT_RUN_ID"]


def test_a_failing_before_hook_fails_the_run_before_anything_is_read(
    tmp_path: Path, make_tree
) -> None:
    data = make_tree({"letter.txt": os.urandom(100_000)})
    out = tmp_path / "out"
    out.mkdir()
    before = script(tmp_path, "stop-app", "echo 'the application would not stop' >&2; exit 3")
    after = script(tmp_path, "start-app", f"echo $MEDVAULT_STATUS > {out}/after.status")
    cli = setup(tmp_path, data, f'before = ["{before} --now"]\nafter = ["{after}"]')
    done = cli("backup", "letters", check=False)
    assert done.returncode == 30
    assert done.stderr.strip().splitlines() == [
        f"medvault: error: before hook '{before} --now' failed: exit code 3"
    ]
    assert (out / "after.status").read_text() == "failed\n", "after runs after a failure too"
    assert snapshots(cli) == [] and cli.objects("data") == [], "nothing was read or stored"
    kept = Kept()
    try:
        backup_files(session(tmp_path, kept), FilesBackupOptions(source="letters"))
    except Exception as exc:
        assert type(exc).__name__ == "HookFailed"
    (record,) = kept.records
    assert record.status == "failed" and record.error is not None and "before hook" in record.error
    first, last = record.details["hooks"]
    assert first["exit_code"] == 3 and first["output"] == "the application would not stop\n"
    assert last["hook"] == "after" and last["exit_code"] == 0


def test_a_before_hook_past_its_timeout_is_killed_with_what_it_started(
    tmp_path: Path, make_tree
) -> None:
    data = make_tree({"letter.txt": b"x"})
    out = tmp_path / "out"
    out.mkdir()
    # The sleep is a child of the shell: the whole process group goes.
    slow = script(tmp_path, "slow", f"echo started; sleep 120; touch {out}/woke")
    cli = setup(tmp_path, data, f'before = ["{slow}"]\ntimeout = "1s"')
    kept = Kept()
    try:
        backup_files(session(tmp_path, kept), FilesBackupOptions(source="letters"))
        raise AssertionError("the backup should have failed")
    except Exception as exc:
        assert "timed out after 1 s" in str(exc)
    (record,) = kept.records
    (hook,) = record.details["hooks"]
    assert hook["timed_out"] and hook["output"] == "started\n" and hook["exit_code"] == -9
    assert snapshots(cli) == []
    assert not (out / "woke").exists()


def test_a_failing_after_hook_makes_the_backup_incomplete_and_keeps_it(
    tmp_path: Path, make_tree
) -> None:
    data = make_tree({"letter.txt": b"Dear colleague"})
    cli = setup(tmp_path, data, "after = [\"sh -c 'echo cannot start the app; exit 7'\"]")
    done = cli("backup", "letters", check=False)
    assert done.returncode == 3
    assert "after hook" in done.stderr and "exit code 7" in done.stderr
    assert len(snapshots(cli)) == 1, "the snapshot is kept"
    kept = Kept()
    result = backup_files(session(tmp_path, kept), FilesBackupOptions(source="letters"))
    assert not result.complete and result.hook_problem is not None
    (record,) = kept.records
    assert record.status == "incomplete" and "exit code 7" in (record.error or "")
    (hook,) = record.details["hooks"]
    assert hook["output"] == "cannot start the app\n" and hook["exit_code"] == 7


def test_a_hook_that_prints_a_lot_keeps_the_end_of_its_output(tmp_path: Path, make_tree) -> None:
    data = make_tree({"letter.txt": b"x"})
    chatty = script(tmp_path, "chatty", "yes 'a line of output' | head -c 2000000; echo THE END")
    cli = setup(tmp_path, data, f'before = ["{chatty}"]')
    kept = Kept()
    result = backup_files(session(tmp_path, kept), FilesBackupOptions(source="letters"))
    assert result.complete and len(snapshots(cli)) == 1
    (hook,) = kept.records[0].details["hooks"]
    assert hook["truncated"] and len(hook["output"]) == 4096
    assert hook["output"].endswith("THE END\n") and hook["exit_code"] == 0


def test_restore_hooks_know_the_snapshot_and_the_target(tmp_path: Path, make_tree) -> None:
    data = make_tree({"letter.txt": b"Dear colleague"})
    out = tmp_path / "out"
    out.mkdir()
    before = script(tmp_path, "before", f"env > {out}/before.env")
    after = script(tmp_path, "after", f"env > {out}/after.env")
    cli = setup(
        tmp_path,
        data,
        f'before_restore = ["{before}"]\nafter_restore = ["{after}"]\n'
        'after = ["does-not-exist-anywhere"]',
    )
    done = cli("backup", "letters", check=False)
    assert done.returncode == 3 and "could not start" in done.stderr
    (snap,) = snapshots(cli)
    assert not (out / "before.env").exists(), "restore hooks do not run around backups"
    target = tmp_path / "restored"
    cli("restore", "latest:letters", "--target", str(target))
    seen = environment(out / "before.env")
    assert seen["MEDVAULT_HOOK"] == "before_restore" and seen["MEDVAULT_SNAPSHOT"] == snap
    assert seen["MEDVAULT_TARGET"] == str(target) and "MEDVAULT_PASSWORD" not in seen
    seen = environment(out / "after.env")
    assert seen["MEDVAULT_HOOK"] == "after_restore" and seen["MEDVAULT_STATUS"] == "ok"


def test_a_hook_that_does_not_split_is_a_configuration_error(tmp_path: Path, make_tree) -> None:
    cli = setup(tmp_path, make_tree({"a": b"a"}), "")
    config = tmp_path / "medvault.toml"
    config.write_text(config.read_text() + 'before = ["sh -c \'unclosed"]\n')
    done = cli("backup", "letters", check=False)
    assert done.returncode == 2 and "source.letters.hooks.before" in done.stderr
