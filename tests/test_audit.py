"""The audit trail: every run leaves a sealed, chained record in the repository it touched,
and `medvault audit verify` finds every way of tampering with them (edit, delete, reorder,
copy, truncate below an anchor), on local and S3 repositories."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.test_pg_wal import crafted_segment
from tests.test_service_runs import Given

from conftest import PASSWORD, Cli, S3Server
from medvault.backends import open_backend
from medvault.repository.audit import (
    KIND_AUDIT,
    AuditLog,
    Head,
    chain_id,
    parse_name,
    record_name,
)
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository
from medvault.service.audit import (
    COUNTS,
    OUTBOX,
    AuditObserver,
    ExportOptions,
    audit_export,
    count_push,
)
from medvault.service.runs import Caller
from medvault.service.session import Session

BACKENDS = ("local", "s3")
MiB = 1024 * 1024
AUDIT_BROKEN = 24


def opened(location: str) -> Repository:
    return Repository.open(open_backend(location), Credential(passphrase=PASSWORD.encode()))


def entries(location: str) -> list:
    repo = opened(location)
    return list(AuditLog(repo).entries())


def operations(location: str) -> list[tuple[str, str]]:
    return [(e.record["operation"], e.record["status"]) for e in entries(location)]


def session_for(url: str, state: Path | None, host: str = "ward-1") -> Session:
    session = Session(
        credentials=Given(PASSWORD),
        caller=Caller(user="dr.smith", shell="cli", host=host),
        repository=url,
        state_dir=state,
    )
    session.observers.append(AuditObserver(session))
    return session


@pytest.fixture
def data(make_tree) -> Path:
    return make_tree({"letters/discharge.txt": b"Discharged home.\n" * 100, "ct.dcm": b"x" * 5000})


# -- every operation leaves a record ---------------------------------------------------------


def test_every_operation_leaves_a_record_with_its_audit_fields(
    cli: Cli, data: Path, tmp_path: Path
) -> None:
    cli("init")
    snap = json.loads(cli("backup", str(data), "--json").stdout)["snapshot"]
    target = tmp_path / "restored"
    cli("restore", snap, "--target", str(target), "--reason", "ticket 4711: chart review")
    cli("hold", "add", snap, "--reason", "litigation 12")
    cli("hold", "remove", snap, "--reason", "case closed")
    new_pass = tmp_path / "new-pass"
    new_pass.write_text("another long passphrase\n")
    cli("key", "add", "--new-password-file", str(new_pass))
    cli("forget", snap)
    cli("prune")
    found = entries(cli.location)
    assert [(e.record["operation"], e.record["status"]) for e in found] == [
        ("init", "ok"),
        ("backup", "ok"),
        ("restore", "ok"),
        ("hold-add", "ok"),
        ("hold-remove", "ok"),
        ("key-add", "ok"),
        ("forget", "ok"),
        ("prune", "ok"),
    ]
    assert [e.seq for e in found] == list(range(8))
    assert len({e.chain for e in found}) == 1
    restore = found[2].record
    assert restore["justification"] == "ticket 4711: chart review"
    assert restore["destination"] == str(target)
    assert restore["snapshots"] == [snap] and restore["bytes_restored"] > 0
    assert restore["encryption"].startswith("AES-256-GCM")
    assert restore["timestamp"] == restore["ended"] and restore["host"] == os.uname().nodename
    assert found[6].record["snapshots"] == [snap]  # the forget names what it removed
    # Nothing deletes audit records: forget and prune left every one of them.
    assert len(cli.objects("audit")) == 8
    assert cli("audit", "verify").returncode == 0


def test_a_failed_backup_is_recorded_as_failed_with_its_error(cli: Cli) -> None:
    cli("init")
    done = cli("backup", str(cli.cwd / "no-such-path"), check=False)
    assert done.returncode == 15
    last = entries(cli.location)[-1].record
    assert (last["operation"], last["status"]) == ("backup", "failed")
    assert "does not exist" in last["error"]


def test_a_wrong_passphrase_waits_in_the_outbox_until_the_right_one_opens_the_repository(
    cli: Cli, data: Path, tmp_path: Path
) -> None:
    cli("init")
    snap = json.loads(cli("backup", str(data), "--json").stdout)["snapshot"]
    done = cli(
        "restore",
        snap,
        "--target",
        str(tmp_path / "out"),
        "--reason",
        "who is this",
        env={"MEDVAULT_PASSWORD": "guess"},
        check=False,
    )
    assert done.returncode == 11
    outbox = Path(cli.env["MEDVAULT_STATE_DIR"]) / OUTBOX
    (waiting,) = list(outbox.iterdir())
    assert stat.S_IMODE(waiting.stat().st_mode) == 0o600
    assert json.loads(waiting.read_text())["record"]["operation"] == "restore"
    assert [op for op, _ in operations(cli.location)] == ["init", "backup"]

    cli("snapshots")  # the next session that opens the repository seals it
    assert list(outbox.iterdir()) == []
    found = entries(cli.location)
    sealed = found[2]
    assert sealed.kind == "run-ended-elsewhere"
    assert (sealed.record["operation"], sealed.record["status"]) == ("restore", "failed")
    assert "wrong passphrase" in sealed.record["error"]
    assert sealed.record["repository"] is not None
    assert found[3].record["operation"] == "snapshots"
    assert cli("audit", "verify").returncode == 0


# -- tampering -------------------------------------------------------------------------------


@pytest.fixture
def chained(cli: Cli, data: Path) -> tuple[Cli, str]:
    """A repository whose chain holds six records (0..5); the chain's id."""
    cli("init")
    for _ in range(3):
        cli("backup", str(data))
    cli("snapshots")
    cli("hold", "list")
    (chain,) = {parse_name(n)[0] for n in cli.objects("audit")}  # type: ignore[index]
    assert len(cli.objects("audit")) == 6
    return cli, chain


def verify_fails(cli: Cli, *expected: str) -> str:
    done = cli("audit", "verify", check=False)
    assert done.returncode == AUDIT_BROKEN, done.stdout + done.stderr
    problems = [line for line in done.stdout.splitlines() if line.startswith("PROBLEM: ")]
    for text in expected:
        assert any(text in p for p in problems), (text, done.stdout)
    assert done.stderr.count("\n") == 1 and "audit trail is damaged" in done.stderr
    return done.stdout


def test_an_edited_byte_is_found(chained: tuple[Cli, str]) -> None:
    cli, chain = chained
    name = record_name(chain, 2)
    cli.damage(name, lambda b: b[:-5] + bytes([b[-5] ^ 1]) + b[-4:])
    verify_fails(cli, f"audit record {name} fails authentication: edited")
    done = cli("check", check=False)
    assert done.returncode == 13 and name in done.stdout + done.stderr


def test_a_record_deleted_from_the_middle_is_a_gap(chained: tuple[Cli, str]) -> None:
    cli, chain = chained
    cli.remove(record_name(chain, 3))
    verify_fails(cli, f"audit chain {chain}: record 3 missing (deleted")


def test_two_records_swapped_are_each_named_as_the_other(chained: tuple[Cli, str]) -> None:
    cli, chain = chained
    first, second = record_name(chain, 1), record_name(chain, 4)
    with cli.backend() as backend:
        one, four = backend.load(first), backend.load(second)
        backend.store(first, four, overwrite=True)
        backend.store(second, one, overwrite=True)
    verify_fails(
        cli,
        f"audit record {first} holds the record of {second}: moved, copied or reordered",
        f"audit record {second} holds the record of {first}",
    )


def test_a_record_copied_to_another_place_or_chain_is_named_as_a_copy(
    chained: tuple[Cli, str],
) -> None:
    cli, chain = chained
    original = record_name(chain, 1)
    elsewhere = record_name("0123456789abcdef", 0)
    with cli.backend() as backend:
        sealed = backend.load(original)
        backend.store(elsewhere, sealed)
    verify_fails(cli, f"audit record {elsewhere} holds the record of {original}")


def test_a_truncated_tail_is_found_against_an_anchor(chained: tuple[Cli, str]) -> None:
    cli, chain = chained
    repo = opened(cli.location)
    anchor = AuditLog(repo).heads()[chain]
    assert anchor.seq == 5
    for seq in (4, 5):
        cli.remove(record_name(chain, seq))
    report = AuditLog(opened(cli.location)).verify(expected_heads={chain: anchor})
    assert report.problems == (
        f"audit chain {chain} ends at record 3 but record 5 was written: records 4..5 were "
        "cut off (truncated)",
    )
    # Without an anchor, a shorter chain is all one can see (the documented limit)...
    assert AuditLog(opened(cli.location)).verify().ok
    # ...but the host that wrote it keeps its head, and `audit verify` checks against it.
    verify_fails(cli, "records 4..5 were cut off (truncated)")


def test_a_rewritten_record_at_the_anchor_is_found(chained: tuple[Cli, str]) -> None:
    cli, chain = chained
    repo = opened(cli.location)
    report = AuditLog(repo).verify(expected_heads={chain: Head(5, "00" * 32)})
    assert report.problems == (
        f"audit record {record_name(chain, 5)} is not the record anchored there: the chain "
        "was rewritten",
    )


def test_check_opens_every_audit_record_under_its_name(chained: tuple[Cli, str]) -> None:
    cli, chain = chained
    assert cli("check").returncode == 0
    with cli.backend() as backend:
        backend.store(record_name(chain, 9), backend.load(record_name(chain, 0)))
    done = cli("check", check=False)
    assert done.returncode == 13 and record_name(chain, 9) in done.stdout + done.stderr


# -- concurrency -----------------------------------------------------------------------------


def test_two_hosts_appending_at_once_keep_two_chains_that_both_verify(
    cli: Cli, tmp_path: Path
) -> None:
    cli("init")
    sessions = [session_for(cli.location, tmp_path / host, host) for host in ("ward-1", "ward-2")]
    errors: list[BaseException] = []

    # Opened one after the other (each derives the key with 64 MiB of Argon2id memory).
    repos = [session.open() for session in sessions]

    def work(session: Session, repo: Repository) -> None:
        try:
            for n in range(12):
                with session.run("snapshots") as run:
                    run.repository = repo.url
                    run.details["n"] = n
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=pair) for pair in zip(sessions, repos, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    repo = opened(cli.location)
    log = AuditLog(repo)
    ward_chains = {chain_id(repo.config.repo_id, h) for h in ("ward-1", "ward-2")}
    assert ward_chains <= set(log.chains())
    for host in ("ward-1", "ward-2"):
        chain = chain_id(repo.config.repo_id, host)
        found = list(log.entries(chain))
        assert [e.seq for e in found] == list(range(12))
        assert {e.record["host"] for e in found} == {host}
    report = log.verify()
    assert report.ok and report.records == 12 * 2 + 1  # and init's, on this host's chain


APPENDER = """
import sys
from pathlib import Path
from medvault.backends import open_backend
from medvault.repository.audit import AuditLog
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository

location, state, who, count = sys.argv[1:5]
repo = Repository.open(open_backend(location), Credential(passphrase=sys.argv[5].encode()))
log = AuditLog(repo, "night-host", state_dir=Path(state))
for n in range(int(count)):
    log.append("run", {"operation": "probe", "who": who, "n": n})
"""


def test_processes_of_one_host_appending_at_once_lose_no_sequence_number(
    cli: Cli, tmp_path: Path
) -> None:
    """Store-if-absent: the loser of a race for a name reads the head again and takes the
    next one, whether its cached head was stale or not."""
    cli("init")
    state = tmp_path / "shared-state"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, cli.location, str(state), who, "15", PASSWORD],
            env=os.environ.copy(),
        )
        for who in ("a", "b")
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    repo = opened(cli.location)
    log = AuditLog(repo, "night-host")
    found = list(log.entries(log.chain))
    assert [e.seq for e in found] == list(range(30))
    assert sorted((e.record["who"], e.record["n"]) for e in found) == sorted(
        (w, n) for w in "ab" for n in range(15)
    )
    assert log.verify().ok


# -- wal-push: counted per hour ----------------------------------------------------------------


def test_wal_pushes_are_counted_per_hour_and_sealed_once_it_has_passed(
    cli: Cli, tmp_path: Path
) -> None:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.vault]\nurl = "{cli.location}"\n'
        '[source.emr]\nkind = "postgres"\ndsn = "host=/nowhere dbname=emr"\n'
    )
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli.env["MEDVAULT_REPOSITORY"] = "vault"
    cli("init")
    for n in (1, 2, 3):
        segment = tmp_path / f"00000001000000000000000{n}"
        segment.write_bytes(crafted_segment(segment.name, 7_000_000_000_000_000_001, MiB))
        cli("wal-push", "emr", str(segment))
    # No record for a push that succeeded: a count of this hour.
    assert operations(cli.location) == [("init", "ok")]
    state = Path(cli.env["MEDVAULT_STATE_DIR"])
    (counter,) = [p for p in (state / COUNTS).iterdir() if not p.name.endswith(".json")]
    assert counter.stat().st_size == 3
    # Once the hour has passed, the next command that opens the repository seals it.
    hour_ago = counter.with_name(counter.name.split(".")[0] + ".20200101T10")
    counter.rename(hour_ago)
    cli("snapshots")
    found = entries(cli.location)
    assert [e.kind for e in found] == ["run", "wal-push-count", "run"]
    count = found[1].record
    assert (count["source"], count["count"], count["operation"]) == ("emr", 3, "wal-push")
    assert count["started"] == "2020-01-01T10:00:00+00:00"
    assert not hour_ago.exists()
    # A push that fails is a run like any other.
    bad = tmp_path / "000000010000000000000009"
    bad.write_bytes(b"not a WAL segment")
    assert cli("wal-push", "emr", str(bad), check=False).returncode != 0
    last = entries(cli.location)[-1].record
    assert (last["operation"], last["status"]) == ("wal-push", "failed")


def test_a_count_of_a_past_hour_is_sealed_by_the_next_push(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    state = tmp_path / "state"
    count_push(state, cli.location, "emr", 5, now=time.time() - 7200)
    session = session_for(cli.location, state)
    with session.run("wal-push", source="emr") as run:
        run.repository = session.open().url
    counts = [e.record for e in entries(cli.location) if e.kind == "wal-push-count"]
    assert [(c["count"], c["source"], c["host"]) for c in counts] == [(5, "emr", "ward-1")]


# -- export ----------------------------------------------------------------------------------


def test_export_gives_the_records_of_a_period_as_jsonl_and_csv(
    cli: Cli, data: Path, tmp_path: Path
) -> None:
    cli("init")
    cli("backup", str(data))
    lines = cli("audit", "export", "--since", "1d").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["operation"] for r in rows] == ["init", "backup"]
    assert {"chain", "seq", "kind", "timestamp", "user", "host", "status"} <= set(rows[1])
    out = tmp_path / "audit.csv"
    cli("audit", "export", "--since", "2020-01-01", "--format", "csv", "--output", str(out))
    csv_lines = out.read_text().splitlines()
    assert csv_lines[0].startswith("chain,seq,kind,timestamp,operation,status")
    # init, backup and the first export (an export's own run is sealed after it wrote)
    assert len(csv_lines) == 1 + 3


def test_export_by_service_respects_until(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    session = session_for(cli.location, tmp_path / "state")
    lines: list[str] = []
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    result = audit_export(session, ExportOptions(since=future, format="jsonl"), lines.append)
    assert (result.records, lines) == (0, [])
    result = audit_export(session, ExportOptions(since="1d", format="jsonl"), lines.append)
    assert result.records == 2  # init, and the first export


# -- object lock -----------------------------------------------------------------------------


def test_audit_records_are_locked_for_the_audit_retention(
    s3_server: S3Server, tmp_path: Path, data: Path
) -> None:
    bucket = s3_server.new_bucket(object_lock=True)
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.vault]\nurl = "s3://{bucket}/repo"\n'
        '[tier.brief]\nfloor = "1d"\n[audit]\nretention = "40d"\n'
        f'[source.letters]\nkind = "files"\npaths = ["{data}"]\ntier = "brief"\n'
    )
    cli = Cli("vault", tmp_path)
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    cli("backup", "letters")
    client = s3_server.client()
    keys = [
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="repo/audit/")["Contents"]
    ]
    assert len(keys) == 2
    for key in keys:
        until = client.head_object(Bucket=bucket, Key=key)["ObjectLockRetainUntilDate"]
        assert until > dt.datetime.now(dt.UTC) + dt.timedelta(days=39), key
    snap = client.list_objects_v2(Bucket=bucket, Prefix="repo/snapshots/")["Contents"][0]["Key"]
    until = client.head_object(Bucket=bucket, Key=snap)["ObjectLockRetainUntilDate"]
    assert until < dt.datetime.now(dt.UTC) + dt.timedelta(days=3)


def test_records_hold_no_secret(cli: Cli, data: Path) -> None:
    cli("init")
    cli("backup", str(data))
    repo = opened(cli.location)
    for name in repo.list_records("audit"):
        assert PASSWORD.encode() not in repo.load_record(name, KIND_AUDIT)
