"""Snapshot set authentication: each snapshot names its host's audit chain head, backups and
forgets leave records naming their snapshots, and `check` finds a snapshot deleted without a
forget, a forgotten snapshot put back, a chain cut below a head a snapshot names, and a
backup's record deleted; normal backup / forget / prune cycles stay clean. Local and S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import PASSWORD, Cli
from medvault.backends import open_backend
from medvault.repository.audit import AuditLog, chain_id, record_name
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository
from medvault.sources.files import BackupOptions, backup_files

BACKENDS = ("local", "s3")
CHECK_FAILED = 13


def opened(location: str) -> Repository:
    return Repository.open(open_backend(location), Credential(passphrase=PASSWORD.encode()))


def backup(cli: Cli, data: Path, text: str) -> str:
    (data / "note.txt").write_text(text)
    return str(json.loads(cli("backup", str(data), "--json").stdout)["snapshot"])


def check_fails(cli: Cli, *expected: str) -> str:
    done = cli("check", check=False)
    output = done.stdout + done.stderr
    assert done.returncode == CHECK_FAILED, output
    for text in expected:
        assert text in output, (text, output)
    return output


def forget_heads(cli: Cli) -> None:
    """Lose this host's cache of the heads it wrote (another host's view of the repository):
    only the heads the snapshots name are left as anchors."""
    shutil.rmtree(cli.cwd / "medvault-state" / "audit-heads", ignore_errors=True)


@pytest.fixture
def data(make_tree) -> Path:
    return make_tree({"chart.txt": b"Allergies: none.\n" * 50})


def test_snapshots_name_their_chain_head_and_cycles_check_clean(cli: Cli, data: Path) -> None:
    cli("init")
    first = backup(cli, data, "one")
    second = backup(cli, data, "two")
    third = backup(cli, data, "three")
    cli("forget", second)
    cli("prune")
    fourth = backup(cli, data, "four")
    repo = opened(cli.location)
    chain = chain_id(repo.config.repo_id, repo.load_snapshot(first).host)
    heads = {s: repo.load_snapshot(s).audit_head for s in (first, third, fourth)}
    # init is record 0; each backup's snapshot names the record before its own.
    assert heads[first] is not None and heads[first][:2] == (chain, 0)
    assert heads[third] is not None and heads[third][:2] == (chain, 2)
    assert heads[fourth] is not None and heads[fourth][:2] == (chain, 5)
    forget = [e for e in AuditLog(repo).entries() if e.record["operation"] == "forget"]
    assert [e.record["snapshots"] for e in forget] == [[second]]
    done = cli("check")
    assert "audit" not in done.stdout + done.stderr
    assert cli("audit", "verify").returncode == 0


def test_a_snapshot_deleted_without_forget_is_reported(cli: Cli, data: Path) -> None:
    cli("init")
    gone = backup(cli, data, "one")
    backup(cli, data, "two")
    cli.remove(f"snapshots/{gone}")
    check_fails(cli, f"snapshot {gone[:12]}", "no forget removed it: it was deleted outside")


def test_a_forgotten_snapshot_put_back_is_reported(cli: Cli, data: Path) -> None:
    cli("init")
    old = backup(cli, data, "one")
    backup(cli, data, "two")
    with cli.backend() as backend:
        sealed = backend.load(f"snapshots/{old}")
    cli("forget", old)
    assert cli("check").returncode == 0
    with cli.backend() as backend:
        backend.store(f"snapshots/{old}", sealed)
    check_fails(cli, f"snapshot {old[:12]} was removed by the forget", "put back")


def test_a_chain_cut_below_a_snapshots_head_is_reported(cli: Cli, data: Path) -> None:
    cli("init")
    for text in ("one", "two", "three"):
        last = backup(cli, data, text)
    repo = opened(cli.location)
    head = repo.load_snapshot(last).audit_head
    assert head is not None and head.seq == 2
    for seq in range(1, 4):  # every backup's record: the chain now ends at init's
        cli.remove(record_name(head.chain, seq))
    forget_heads(cli)
    assert AuditLog(opened(cli.location)).verify().ok  # alone, the chain looks whole
    check_fails(
        cli,
        f"audit chain {head.chain} ends at record 0 but record 2 was written",
        "truncated",
    )


def test_a_backups_record_deleted_and_written_over_is_reported(cli: Cli, data: Path) -> None:
    cli("init")
    backup(cli, data, "one")
    snap = backup(cli, data, "two")
    repo = opened(cli.location)
    head = repo.load_snapshot(snap).audit_head
    assert head is not None
    # Its record (the tail) deleted, and the head cache with it: the next run chains on
    # from the record before, so the chain itself is whole.
    cli.remove(record_name(head.chain, head.seq + 1))
    forget_heads(cli)
    cli("snapshots")
    assert cli("audit", "verify").returncode == 0
    check_fails(cli, f"snapshot {snap[:12]}: the record of the backup that made it is missing")


def test_a_record_not_yet_sealed_is_a_note_and_old_snapshots_are_fine(cli: Cli, data: Path) -> None:
    cli("init")
    # A snapshot saved by a process that records no audit trail (as before it existed).
    repo = opened(cli.location)
    old = backup_files(repo, BackupOptions(source="files", paths=[str(data)])).snapshot
    assert old.audit_head is None
    snap = backup(cli, data, "two")
    head = opened(cli.location).load_snapshot(snap).audit_head
    assert head is not None
    # Its record not in the chain yet, and no later run of this host there: as when the
    # record waits in the outbox.
    cli.remove(record_name(head.chain, head.seq + 1))
    forget_heads(cli)
    done = cli("check")
    assert f"snapshot {snap[:12]}: the record of the backup that made it has not reached" in (
        done.stdout + done.stderr
    )


# -- `medvault copy` keeps the chains verifiable ---------------------------------------------


@pytest.fixture
def two_repos(cli: Cli, tmp_path: Path, data: Path) -> tuple[Cli, Cli]:
    """The test's repository (local or S3) as the primary with two backups and a forget, and
    a local secondary, named in a medvault.toml."""
    secondary_location = str(tmp_path / "secondary")
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{cli.location}"\n\n'
        f'[repository.secondary]\nurl = "{secondary_location}"\n'
    )
    primary = Cli("primary", tmp_path, cli.location)
    secondary = Cli("secondary", tmp_path, secondary_location)
    for one in (primary, secondary):
        one.env["MEDVAULT_CONFIG"] = str(config)
    primary("init")
    gone = backup(primary, data, "one")
    backup(primary, data, "two")
    primary("forget", gone)
    return primary, secondary


def copied_chain_edit_is_found(primary: Cli, secondary: Cli) -> None:
    """The primary's chain is in the secondary and verifies there; an edit to one of its
    records, even one sealed properly under the secondary's keys, does not."""
    done = primary("copy", "--from", "primary", "--to", "secondary")
    source_chains = {n.split("/")[1] for n in primary.objects("audit")}
    assert source_chains <= {n.split("/")[1] for n in secondary.objects("audit")}
    assert secondary("audit", "verify").returncode == 0, done.stdout
    assert secondary("check").returncode == 0
    (chain,) = source_chains
    name = record_name(chain, 1)
    target = opened(secondary.location)
    doc = json.loads(target.load_record(name, b"medvault audit"))
    doc["record"]["status"] = "failed"  # rewritten by someone holding the target's keys
    target.store_record(name, json.dumps(doc).encode(), b"medvault audit", overwrite=True)
    verify = secondary("audit", "verify", check=False)
    assert verify.returncode != 0
    assert f"{name} fails its MAC" in verify.stdout + verify.stderr
    secondary.damage(record_name(chain, 2), lambda b: b[:-3] + bytes([b[-3] ^ 1]) + b[-2:])
    verify = secondary("audit", "verify", check=False)
    assert f"audit record {record_name(chain, 2)} fails authentication" in verify.stdout


def test_a_re_encrypted_copy_keeps_the_audit_chains_verifiable(
    two_repos: tuple[Cli, Cli],
) -> None:
    primary, secondary = two_repos
    secondary("init")
    copied_chain_edit_is_found(primary, secondary)
    assert secondary.objects("audit-keys")  # the source chain's MAC key came along


def test_a_raw_copy_keeps_the_audit_chains_verifiable(two_repos: tuple[Cli, Cli]) -> None:
    primary, secondary = two_repos
    secondary("init", "--copy-keys-from", "primary")
    copied_chain_edit_is_found(primary, secondary)
    assert not secondary.objects("audit-keys")  # the same keys: nothing to carry
