"""Fault injection: an S3 store that fails.

Through a proxy in front of the local S3 server (tests/s3faults.py): throttling, server
errors before and after the store carried a write out, answers held past the client's read
timeout, and bodies cut short. backup, wal-push, restore, check --read-data and wal-fetch
succeed through retries; restored bytes are exact, and every committed snapshot restores.

The counts (faults injected, restores) are summed over the passing tests and printed at the
end of the run (conftest.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.s3faults import INTERNAL_ERROR, Cut, Fault, FlakyProxy, Hold, Request, busy_store, every
from tests.test_pg_wal import crafted_segment

from conftest import PASSWORD, Cli, S3Server, tree_digest
from medvault.backends import open_backend
from medvault.recovery.files import restore_files
from medvault.repository.check import check_repository
from medvault.repository.keys import Credential
from medvault.repository.repo import Repository
from medvault.repository.wal import WalArchive

MiB = 1024 * 1024
SYSTEM_ID = 7_000_000_000_000_000_001


def write_segment(folder: Path, number: int) -> Path:
    path = folder / f"{1:08X}{0:08X}{number:08X}"
    path.write_bytes(crafted_segment(path.name, SYSTEM_ID, 16 * MiB))
    return path


# -- S3 faults -------------------------------------------------------------------------------

S3_FAULTS: dict[str, Callable[[Request], Fault | None]] = {
    "throttling and server errors": busy_store,
    "server errors after the store wrote": every(
        2, dataclasses.replace(INTERNAL_ERROR, after_store=True), method="PUT"
    ),
    "answers held past the read timeout": every(9, Hold(2.5)),
    "bodies cut short": every(3, Cut(), method="GET"),
}
READ_TIMEOUT_S = 1.0


def one_line(text: str) -> bool:
    return text.strip().count("\n") == 0 and "Traceback" not in text


@pytest.mark.parametrize("faults", list(S3_FAULTS))
def test_s3_faults_are_retried_and_never_cost_a_byte(
    faults: str,
    s3_server: S3Server,
    tmp_path: Path,
    make_tree: Callable[[dict[str, bytes | str]], Path],
    fault_tally: Counter[str],
) -> None:
    url = f"s3://{s3_server.new_bucket()}/repo"
    config = tmp_path / "medvault.toml"
    config.write_text(f'[repository.offsite]\nurl = "{url}"\nread_timeout_s = {READ_TIMEOUT_S}\n')
    cli = Cli("offsite", tmp_path)
    cli.env["MEDVAULT_CONFIG"] = str(config)
    cli("init")
    data = make_tree(
        {f"notes/{i}.txt": os.urandom(200_000) for i in range(8)}
        | {"scans/ct.dcm": os.urandom(1_500_000), "letters/a.txt": b"Referral.\n" * 20_000}
    )
    segment = write_segment(tmp_path, 1)
    restored = tmp_path / "restored"
    steps = [
        ("backup", str(data), "--json"),
        ("wal-push", "emr", str(segment)),
        ("restore", "latest", "--target", str(restored)),
        ("check", "--read-data"),
        ("wal-fetch", "emr", segment.name, str(tmp_path / "fetched")),
    ]
    with FlakyProxy(s3_server.endpoint, S3_FAULTS[faults]) as proxy:
        cli.env["AWS_ENDPOINT_URL"] = proxy.endpoint
        answers = [cli(*step, check=False) for step in steps]
    for step, done in zip(steps, answers, strict=True):
        assert done.returncode == 0, f"{step[0]} through {faults}: {done.stderr}"
    abandoned = proxy.injected.pop("abandoned by the client", 0)
    assert sum(proxy.injected.values()) >= 5, proxy.injected
    if faults == "answers held past the read timeout":
        # read_timeout_s from medvault.toml: the client gave up on every held answer.
        assert abandoned == proxy.injected[Hold(0).kind], proxy.injected
    for kind, count in proxy.injected.items():
        fault_tally[f"s3:{kind}"] += count

    # Straight to the store now: what was written is whole, and reads back exactly.
    assert tree_digest(restored / str(data).lstrip("/")) == tree_digest(data)
    assert (tmp_path / "fetched").read_bytes() == segment.read_bytes()
    repo = Repository.open(open_backend(url), Credential(passphrase=PASSWORD.encode()))
    try:
        report = check_repository(repo, read_data=True)
        assert report.ok, report.errors
        fault_tally["checks clean"] += 1
        for n, snap in enumerate(repo.list_snapshots()):
            restore_files(repo, snap, str(tmp_path / f"again-{n}"))
            assert tree_digest(tmp_path / f"again-{n}" / str(data).lstrip("/")) == tree_digest(data)
            fault_tally["snapshots restored"] += 1
        assert WalArchive(repo, "emr").fetch(segment.name) == segment.read_bytes()
    finally:
        repo.close()
