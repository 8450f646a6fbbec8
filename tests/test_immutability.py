"""Backups nobody can destroy before their date: S3 Object Lock (COMPLIANCE mode) on a real
S3-compatible server, and the local append-only mode. Each test holds the passphrase and
uses medvault's own commands, as an intruder on the backup host would."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from tests.test_pg_wal import crafted_segment

from conftest import Cli, S3Server, tree_digest
from medvault.backends import open_backend
from medvault.errors import NotSupported, ObjectLocked

MiB = 1024 * 1024


def write_config(tmp_path: Path, repository: str, data: Path) -> Path:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f"[repository.vault]\n{repository}\n"
        '[tier.critical]\nrpo = "15m"\nrto = "1h"\nfloor = "30d"\n'
        '[tier.brief]\nfloor = "1h"\n'
        '[tier.blink]\nfloor = "12s"\n'
        f'[source.letters]\nkind = "files"\npaths = ["{data}"]\ntier = "critical"\n'
        f'[source.scratch]\nkind = "files"\npaths = ["{data}"]\ntier = "brief"\n'
        f'[source.blink]\nkind = "files"\npaths = ["{data}"]\ntier = "blink"\n'
    )
    return config


def vault_cli(tmp_path: Path, config: Path) -> Cli:
    cli = Cli("vault", tmp_path)
    cli.env["MEDVAULT_CONFIG"] = str(config)
    return cli


def snapshot_id(cli: Cli, source: str) -> str:
    done = cli("backup", source, "--json")
    return str(json.loads(done.stdout)["snapshot"])


def retention(s3: S3Server, bucket: str, prefix: str) -> dict[str, dt.datetime]:
    client = s3.client()
    found = {}
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        head = client.head_object(Bucket=bucket, Key=obj["Key"])
        found[obj["Key"]] = head.get("ObjectLockRetainUntilDate")
    return found


@pytest.fixture
def locked(s3_server: S3Server, tmp_path: Path, make_tree) -> tuple[Cli, str, Path]:
    bucket = s3_server.new_bucket(object_lock=True)
    data = make_tree(
        {
            "letters/discharge.txt": b"Discharged home, follow-up in two weeks.\n" * 3000,
            "scans/ct.dcm": os.urandom(3 * MiB),
        }
    )
    cli = vault_cli(tmp_path, write_config(tmp_path, f'url = "s3://{bucket}/repo"', data))
    cli("init")
    return cli, bucket, data


def test_every_object_is_locked_for_its_tier_and_forget_cannot_remove_it(
    locked: tuple[Cli, str, Path], s3_server: S3Server, tmp_path: Path
) -> None:
    cli, bucket, data = locked
    snap = snapshot_id(cli, "letters")
    in_30_days = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    dates = retention(s3_server, bucket, "repo/")
    backup_objects = {k: v for k, v in dates.items() if not k.startswith("repo/locks/")}
    assert {k.split("/")[1] for k in backup_objects} >= {"config", "keys", "data", "index"}
    for key, until in backup_objects.items():
        assert until is not None and until > in_30_days - dt.timedelta(minutes=5), key

    done = cli("forget", snap, check=False)
    assert done.returncode == 21
    assert "kept" in done.stdout and "locked until" in done.stdout
    cli("restore", snap, "--target", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out" / str(data).lstrip("/")) == tree_digest(data)

    # Underneath medvault's commands, its backend refuses too, and so does the store itself
    # when asked to remove the locked version outright.
    backend = open_backend(f"s3://{bucket}/repo")
    pack = next(k for k in backup_objects if k.startswith("repo/data/"))
    with pytest.raises(ObjectLocked, match="locked until"):
        backend.delete(pack.removeprefix("repo/"))
    with pytest.raises(ObjectLocked):
        backend.store(f"snapshots/{snap}", b"forged", overwrite=True)
    client = s3_server.client()
    version = client.head_object(Bucket=bucket, Key=pack)["VersionId"]
    with pytest.raises(Exception, match="AccessDenied"):
        client.delete_object(Bucket=bucket, Key=pack, VersionId=version)

    # A new passphrase is added; the old slot cannot be removed before its date, and says so.
    new = tmp_path / "new-pass"
    new.write_text("a much longer and newer passphrase\n")
    done = cli("key", "passwd", "--new-password-file", str(new))
    assert "old key slot" in done.stderr and "locked until" in done.stderr
    cli("check", "--read-data")


def test_reused_packs_are_extended_to_the_longer_tier(
    locked: tuple[Cli, str, Path], s3_server: S3Server
) -> None:
    cli, bucket, _ = locked
    snapshot_id(cli, "scratch")  # floor 1h
    packs = {k: v for k, v in retention(s3_server, bucket, "repo/data/").items()}
    assert all(until < dt.datetime.now(dt.UTC) + dt.timedelta(days=1) for until in packs.values())
    snapshot_id(cli, "letters")  # the same files, floor 30d: no new data, the old packs reused
    after = retention(s3_server, bucket, "repo/data/")
    in_30_days = dt.datetime.now(dt.UTC) + dt.timedelta(days=30) - dt.timedelta(minutes=5)
    assert set(packs) <= set(after)
    for key in packs:
        assert after[key] > in_30_days, f"{key} still ends {after[key]}"
    indexes = retention(s3_server, bucket, "repo/index/")
    assert sum(until > in_30_days for until in indexes.values()) >= 1


def test_a_snapshot_can_be_forgotten_once_its_date_has_passed(
    locked: tuple[Cli, str, Path], s3_server: S3Server
) -> None:
    cli, bucket, _ = locked
    # A floor long enough that the first forget surely meets the lock on a loaded machine;
    # then wait for the date the store itself holds, not for a guess.
    snap = snapshot_id(cli, "blink")
    assert cli("forget", snap, check=False).returncode == 21
    until = retention(s3_server, bucket, f"repo/snapshots/{snap}")[f"repo/snapshots/{snap}"]
    time.sleep(max(0.0, (until - dt.datetime.now(dt.UTC)).total_seconds()) + 1)
    done = cli("forget", snap)
    assert "removed" in done.stdout
    assert snap not in cli("snapshots", "--json").stdout


def test_wal_is_locked_and_never_replaced(
    locked: tuple[Cli, str, Path], s3_server: S3Server
) -> None:
    cli, bucket, _ = locked
    config = Path(cli.env["MEDVAULT_CONFIG"])
    config.write_text(
        config.read_text() + '[source.emr]\nkind = "postgres"\ndsn = "host=/nowhere dbname=emr"\n'
        'tier = "critical"\n'
    )
    segment = cli.cwd / "000000010000000000000001"
    segment.write_bytes(crafted_segment(segment.name, 7_000_000_000_000_000_001, 16 * MiB))
    cli("wal-push", "emr", str(segment))
    cli("wal-push", "emr", str(segment))  # identical again: fine
    (key, until), *_ = [
        (k, v) for k, v in retention(s3_server, bucket, "repo/wal/emr/").items() if "0001" in k
    ]
    assert until > dt.datetime.now(dt.UTC) + dt.timedelta(days=29), key
    other = cli.cwd / "other" / segment.name
    other.parent.mkdir()
    other.write_bytes(crafted_segment(segment.name, 7_000_000_000_000_000_001, 16 * MiB, b"x"))
    done = cli("wal-push", "emr", str(other), check=False)
    assert done.returncode == 18 and "refusing to overwrite" in done.stderr


def test_append_only_local_repository_refuses_every_delete_and_overwrite(
    tmp_path: Path, make_tree
) -> None:
    data = make_tree({"chart.txt": b"Allergies: penicillin.\n" * 100})
    repo = tmp_path / "vault"
    cli = vault_cli(tmp_path, write_config(tmp_path, f'url = "{repo}"\nappend_only = true', data))
    cli("init")
    first = snapshot_id(cli, "letters")
    (data / "chart.txt").write_bytes(b"Allergies: penicillin, latex.\n" * 100)
    snapshot_id(cli, "letters")
    done = cli("forget", first, check=False)
    assert done.returncode == 21 and "append-only" in done.stdout
    assert len(json.loads(cli("snapshots", "--json").stdout)) == 2
    slots = json.loads(cli("key", "list", "--json").stdout)
    new = tmp_path / "new-pass"
    new.write_text("another long passphrase for the vault\n")
    cli("key", "add", "--new-password-file", str(new))
    done = cli("key", "remove", slots[0]["id"], check=False)
    assert done.returncode == 21 and "append-only" in done.stderr
    assert not list((repo / "locks").iterdir()), "locks still come and go"
    with pytest.raises(ObjectLocked):
        open_backend(str(repo), _append_only_settings(repo)).delete(f"snapshots/{first}")
    cli("restore", first, "--target", str(tmp_path / "out"))
    cli("check", "--read-data")


def _append_only_settings(repo: Path):  # type: ignore[no-untyped-def]
    from medvault.config import RepositorySettings

    return RepositorySettings(url=str(repo), append_only=True)


# -- legal holds: enforced by the store where it has Object Lock ----------------------------


@pytest.fixture
def lock_only(s3_server: S3Server, tmp_path: Path, make_tree) -> tuple[Cli, str, Path]:
    """A bucket with Object Lock and no retention set by medvault (no tiers): only a legal
    hold keeps an object there."""
    bucket = s3_server.new_bucket(object_lock=True)
    data = make_tree(
        {
            "letters/discharge.txt": b"Discharged home, follow-up in two weeks.\n" * 3000,
            "scans/ct.dcm": os.urandom(2 * MiB),
        }
    )
    cli = Cli(f"s3://{bucket}/repo", tmp_path)
    cli("init")
    return cli, bucket, data


def held_keys(s3: S3Server, bucket: str) -> set[str]:
    """The objects of the repository under an S3 legal hold, as the store says."""
    client = s3.client()
    held = set()
    for obj in client.list_objects_v2(Bucket=bucket, Prefix="repo/")["Contents"]:
        status = client.get_object_legal_hold(Bucket=bucket, Key=obj["Key"])["LegalHold"]
        if status.get("Status") == "ON":
            held.add(obj["Key"].removeprefix("repo/"))
    return held


def backup_id(cli: Cli, data: Path) -> str:
    return str(json.loads(cli("backup", str(data), "--json").stdout)["snapshot"])


def test_a_held_snapshots_objects_carry_a_legal_hold_no_delete_gets_past(
    lock_only: tuple[Cli, str, Path], s3_server: S3Server, tmp_path: Path
) -> None:
    cli, bucket, data = lock_only
    snap = backup_id(cli, data)
    assert held_keys(s3_server, bucket) == set()
    cli("hold", "add", snap, "--reason", "litigation 2026-114")
    needed = {f"snapshots/{snap}", f"holds/{snap}", *cli.objects("data"), *cli.objects("index")}
    assert held_keys(s3_server, bucket) == needed

    # The store refuses to remove a held version, whoever asks...
    client = s3_server.client()
    pack = f"repo/{cli.objects('data')[0]}"
    version = client.head_object(Bucket=bucket, Key=pack)["VersionId"]
    with pytest.raises(Exception, match="AccessDenied"):
        client.delete_object(Bucket=bucket, Key=pack, VersionId=version)
    with cli.backend() as backend, pytest.raises(ObjectLocked, match="legal hold"):
        backend.delete(pack.removeprefix("repo/"))
    # ...so hiding the hold record (a delete marker) does not let forget remove the snapshot.
    client.delete_object(Bucket=bucket, Key=f"repo/holds/{snap}")
    assert json.loads(cli("hold", "list", "--json").stdout) == []
    done = cli("forget", snap, check=False)
    assert done.returncode == 21 and "legal hold" in done.stdout
    cli("restore", snap, "--target", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out" / str(data).lstrip("/")) == tree_digest(data)


def test_a_release_lifts_the_legal_hold_except_where_another_hold_needs_it(
    lock_only: tuple[Cli, str, Path], s3_server: S3Server
) -> None:
    cli, bucket, data = lock_only
    first = backup_id(cli, data)
    again = backup_id(cli, data)  # the same data: it needs exactly the packs of the first
    packs_of_first = set(cli.objects("data"))
    (data / "scans" / "mri.dcm").write_bytes(os.urandom(2 * MiB))
    grown = backup_id(cli, data)  # reuses the first's packs and adds its own
    own_of_grown = set(cli.objects("data")) - packs_of_first
    assert own_of_grown and len(cli.objects("data")) > len(packs_of_first)
    for snap in (first, again, grown):
        cli("hold", "add", snap, "--reason", "litigation 2026-114")

    cli("hold", "remove", grown, "--reason", "excluded from the case")
    held = held_keys(s3_server, bucket)
    assert f"snapshots/{grown}" not in held and not own_of_grown & held
    assert packs_of_first <= held, "the first two snapshots still need these"
    assert {f"snapshots/{first}", f"snapshots/{again}", f"holds/{first}"} <= held

    cli("hold", "remove", first, "--reason", "case closed")
    held = held_keys(s3_server, bucket)
    assert packs_of_first <= held, "a shared pack stays held while one hold needs it"
    assert f"snapshots/{first}" not in held and f"snapshots/{again}" in held

    cli("hold", "remove", again, "--reason", "case closed")
    assert held_keys(s3_server, bucket) == set()
    cli("forget", first, again, grown)
    assert json.loads(cli("snapshots", "--json").stdout) == []


def test_stores_without_object_lock_say_they_cannot_place_legal_holds(
    s3_server: S3Server, tmp_path: Path
) -> None:
    for url in (str(tmp_path / "repo"), f"s3://{s3_server.new_bucket()}/repo"):
        backend = open_backend(url)
        backend.create()
        backend.store("holds/x", b"x")
        with pytest.raises(NotSupported, match="Object Lock"):
            backend.set_legal_hold("holds/x", True)
        with pytest.raises(NotSupported, match="Object Lock"):
            backend.legal_hold("holds/x")


def test_a_prune_on_a_locked_bucket_leaves_no_lock_behind(
    lock_only: tuple[Cli, str, Path],
) -> None:
    """A lock rewritten while its run works has older versions in a versioned bucket; its
    release removes them too, or the newest would come back as a live lock."""
    cli, _bucket, data = lock_only
    cli("backup", str(data))
    cli("prune", "--young", "0s")
    assert cli.objects("locks") == []
    cli("forget", "latest")  # an exclusive lock: no prune lock left in the way
