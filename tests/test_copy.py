"""`medvault copy`: snapshots and WAL to a second repository, across backends and keys,
without touching the source; idempotent, resumable, and moving only what the target lacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.test_pg_wal import crafted_segment

from conftest import MEDVAULT, Cli, S3Server, tree_digest

MiB = 1024 * 1024


def config_for(tmp_path: Path, primary: str, secondary: str) -> Path:
    config = tmp_path / "medvault.toml"
    config.write_text(
        f'[repository.primary]\nurl = "{primary}"\n\n[repository.secondary]\nurl = "{secondary}"\n'
    )
    return config


def cli_for(tmp_path: Path, repo: str, config: Path, location: str) -> Cli:
    cli = Cli(repo, tmp_path, location)
    cli.env["MEDVAULT_CONFIG"] = str(config)
    return cli


def listing(cli: Cli) -> dict[str, tuple[int, float | None]]:
    with cli.backend() as backend:
        return {
            o.name: (o.size, o.modified)
            for folder in ("config", "keys", "data", "index", "snapshots", "wal")
            for o in backend.list(folder)
        }


def copy(cli: Cli, *args: str) -> dict[str, object]:
    done = cli("copy", "--from", "primary", "--to", "secondary", "--json", *args)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def push_segment(cli: Cli, folder: Path, number: int) -> None:
    name = f"{1:08X}{0:08X}{number:08X}"
    segment = folder / name
    segment.write_bytes(crafted_segment(name, 7_000_000_000_000_000_001, 16 * MiB))
    cli("wal-push", "emr", str(segment))


@pytest.fixture
def two_sites(s3_server: S3Server, tmp_path: Path, make_tree) -> tuple[Cli, Cli, Path]:
    """A local primary with two snapshots and three WAL files; an S3 secondary."""
    locations = str(tmp_path / "primary"), f"s3://{s3_server.new_bucket()}/secondary"
    config = config_for(tmp_path, *locations)
    primary = cli_for(tmp_path, "primary", config, locations[0])
    secondary = cli_for(tmp_path, "secondary", config, locations[1])
    data = make_tree(
        {
            "scans/mri.dcm": os.urandom(6 * MiB),
            "letters/a.txt": b"Referral to cardiology.\n" * 5000,
            "letters/b.txt": b"Discharge summary.\n" * 5000,
        }
    )
    primary("init")
    primary("backup", str(data))
    (data / "letters" / "c.txt").write_bytes(b"New letter.\n" * 1000)
    primary("backup", str(data))
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    for number in (1, 2, 3):
        push_segment(primary, wal, number)
    return primary, secondary, data


def test_copy_with_different_keys_re_encrypts_and_leaves_the_source_untouched(
    two_sites: tuple[Cli, Cli, Path], tmp_path: Path
) -> None:
    primary, secondary, data = two_sites
    secondary("init")
    before = listing(primary)
    result = copy(primary)
    assert result["mode"] == "re-encrypt"
    assert len(result["copied"]) == 2 and result["wal_copied"] == 4  # 3 segments + cluster
    assert listing(primary) == before, "the source was only read"

    snaps = json.loads(secondary("snapshots", "--json").stdout)
    originals = json.loads(primary("snapshots", "--json").stdout)
    assert [s["origin"].split(":")[1] for s in snaps] == [s["id"] for s in originals]
    assert {s["id"] for s in snaps}.isdisjoint(s["id"] for s in originals)
    secondary("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out" / str(data).lstrip("/")) == tree_digest(data)
    secondary("check", "--read-data")
    secondary("wal-fetch", "emr", f"{1:08X}{0:08X}{2:08X}", str(tmp_path / "seg"))

    again = copy(primary)
    assert again["copied"] == [] and len(again["present"]) == 2
    assert again["wal_copied"] == 0 and again["wal_present"] == 4


def test_copy_with_shared_keys_moves_packs_as_stored_and_only_what_is_missing(
    two_sites: tuple[Cli, Cli, Path], tmp_path: Path
) -> None:
    primary, secondary, data = two_sites
    secondary("init", "--copy-keys-from", "primary")
    first, second = json.loads(primary("snapshots", "--json").stdout)
    result = copy(primary, "--snapshot", first["id"], "--no-wal")
    assert result["mode"] == "raw" and result["copied"] == [first["id"]]
    assert result["blobs"] == 0, "nothing was decrypted"
    packs_first = int(str(result["packs"]))
    assert packs_first >= 1

    (data / "letters" / "d.txt").write_bytes(os.urandom(MiB))
    primary("backup", str(data))
    result = copy(primary)
    assert len(result["copied"]) == 2 and result["present"] == [first["id"]]
    with primary.backend() as backend:
        source_packs = {o.name for o in backend.list("data")}
    with secondary.backend() as backend:
        target_packs = {o.name for o in backend.list("data")}
    assert target_packs == source_packs
    assert packs_first + int(str(result["packs"])) == len(source_packs), "no pack sent twice"
    assert json.loads(secondary("snapshots", "--json").stdout)[1]["id"] == second["id"]
    secondary("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out" / str(data).lstrip("/")) == tree_digest(data)
    secondary("check", "--read-data")

    # The second site's passphrase is its own now, but the key it shares with the primary is
    # proof enough: a copy needs no credential for it (and derives no key for it).
    new_passphrase = tmp_path / "second-site-passphrase"
    new_passphrase.write_text("another passphrase for the second site\n")
    secondary("key", "passwd", "--new-password-file", str(new_passphrase))
    assert secondary("snapshots", check=False).returncode != 0, "the old passphrase is refused"
    (data / "letters" / "e.txt").write_bytes(os.urandom(MiB))
    primary("backup", str(data))
    assert len(copy(primary)["copied"]) == 1


def test_a_killed_copy_resumes_without_sending_data_twice(
    s3_server: S3Server, tmp_path: Path, make_tree
) -> None:
    locations = str(tmp_path / "primary"), f"s3://{s3_server.new_bucket()}/secondary"
    config = config_for(tmp_path, *locations)
    primary = cli_for(tmp_path, "primary", config, locations[0])
    secondary = cli_for(tmp_path, "secondary", config, locations[1])
    data = make_tree({f"scans/{i}.dcm": os.urandom(8 * MiB) for i in range(24)})
    primary("init")
    primary("backup", str(data))
    secondary("init")
    proc = subprocess.Popen(
        [MEDVAULT, "copy", "--from", "primary", "--to", "secondary"],
        env=primary.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    with secondary.backend() as backend:  # one client: polls take milliseconds, not 100 ms
        while (
            not any(True for _ in backend.list("data"))
            and time.monotonic() < deadline
            and proc.poll() is None
        ):
            time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert secondary.objects("data"), "the copy was killed after it had stored some packs"
    assert not secondary.objects("snapshots"), "and before it committed the snapshot"

    result = copy(primary)
    assert len(result["copied"]) == 1
    with primary.backend() as backend:
        source_bytes = sum(o.size for o in backend.list("data"))
    with secondary.backend() as backend:
        target_bytes = sum(o.size for o in backend.list("data"))
    assert target_bytes < source_bytes * 1.05, "the packs of the killed run were reused"
    secondary("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out" / str(data).lstrip("/")) == tree_digest(data)
    secondary("check", "--read-data")
    assert copy(primary)["copied"] == []


def test_copy_refuses_the_same_repository_and_names_a_missing_one(
    tmp_path: Path, make_tree
) -> None:
    config = config_for(tmp_path, str(tmp_path / "primary"), str(tmp_path / "primary"))
    primary = cli_for(tmp_path, "primary", config, str(tmp_path / "primary"))
    primary("init")
    done = primary("copy", "--from", "primary", "--to", "secondary", check=False)
    assert done.returncode == 2 and "same repository" in done.stderr
    config = config_for(tmp_path, str(tmp_path / "primary"), str(tmp_path / "nowhere"))
    done = primary("copy", "--from", "primary", "--to", "secondary", check=False)
    assert done.returncode == 10 and "no medvault repository" in done.stderr
