"""The end-to-end demo behind `make demo`: clinical documents backed up, changed, backed up
again (dedup), restored, and proven identical. Runs the real `medvault` command."""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MEDVAULT = str(Path(sys.executable).parent / "medvault")
SURNAMES = ["Okafor", "Lindqvist", "Nakamura", "Moreau", "Castillo", "Haddad", "Kowalski"]
FINDINGS = [
    "no acute distress",
    "mild hypertension",
    "type 2 diabetes, well controlled",
    "post-operative recovery uneventful",
    "allergic to penicillin",
]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def medvault(*args: str, env: dict[str, str]) -> str:
    print(f"$ medvault {' '.join(args)}", flush=True)
    done = subprocess.run([MEDVAULT, *args], env=env, capture_output=True, text=True)
    if done.stdout:
        print(done.stdout.rstrip())
    if done.returncode != 0:
        print(done.stderr.rstrip(), file=sys.stderr)
        raise SystemExit(f"demo failed: medvault {args[0]} exited {done.returncode}")
    return done.stdout


def write_clinic(root: Path, rng: random.Random) -> None:
    for n in range(40):
        patient = f"{rng.choice(SURNAMES)}-{1000 + n}"
        letter = root / "letters" / f"{patient}-discharge.txt"
        letter.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"Discharge summary for {patient}."]
        lines += [f"Day {d}: {rng.choice(FINDINGS)}." for d in range(1, 200)]
        letter.write_text("\n".join(lines) + "\n")
        labs = root / "labs" / f"{patient}.csv"
        labs.parent.mkdir(parents=True, exist_ok=True)
        rows = [f"2026-{m:02d}-01,HbA1c,{rng.uniform(5, 9):.1f},%" for m in range(1, 13)]
        labs.write_text("date,test,value,unit\n" + "\n".join(rows) + "\n")
    scans = root / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    for n in range(6):
        (scans / f"ct-{n:04d}.dcm").write_bytes(rng.randbytes(2_000_000))


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="medvault-demo-"))
    env = {
        **os.environ,
        "MEDVAULT_PASSWORD": secrets.token_urlsafe(24),
        "MEDVAULT_REPOSITORY": str(work / "repository"),
        # This demo's own run history and records in waiting, not the host's.
        "MEDVAULT_STATE_DIR": str(work / "state"),
    }
    clinic = work / "clinic" / "uploads"
    try:
        say("A clinic's uploads: discharge letters, lab results, CT scans")
        write_clinic(clinic, random.Random(2026))
        total = sum(p.stat().st_size for p in clinic.rglob("*") if p.is_file())
        print(f"{len(digest(clinic))} files, {total / 1e6:.1f} MB in {clinic}")

        say("Create an encrypted repository (passphrase from MEDVAULT_PASSWORD)")
        medvault("init", env=env)

        say("First backup: everything is new")
        medvault("backup", str(clinic), "--source", "uploads", "--tag", "demo", env=env)

        say("A day of work: two letters amended, one scan re-uploaded under a new name")
        for letter in sorted((clinic / "letters").iterdir())[:2]:
            with letter.open("a") as handle:
                handle.write("Addendum: follow-up booked in six weeks.\n")
        shutil.copy(clinic / "scans" / "ct-0000.dcm", clinic / "scans" / "ct-0000-copy.dcm")

        say("Second backup: only the changes are stored (the copied scan dedups to nothing)")
        second = json.loads(
            medvault("backup", str(clinic), "--source", "uploads", "--json", env=env)
        )
        print(f"-> read {second['bytes_read']} bytes, added {second['bytes_added']} bytes")

        say("History")
        medvault("snapshots", env=env)
        medvault("diff", second["parent"][:12], "latest", env=env)

        say("Verify every byte in the repository")
        medvault("check", "--read-data", env=env)

        say("Restore the latest snapshot and prove it identical")
        target = work / "restored"
        medvault(
            "restore",
            "latest:uploads",
            "--target",
            str(target),
            "--reason",
            "INC-2231: letters overwritten by a faulty import",
            env=env,
        )
        restored = target / str(clinic).lstrip("/")
        if digest(restored) != digest(clinic):
            raise SystemExit("demo failed: the restore differs from the source")
        print(
            f"restored tree is identical to the source: {len(digest(clinic))} files, "
            "SHA-256 of every file compared"
        )
        say("The audit trail: every run above, sealed and hash-chained in the repository")
        medvault("audit", "verify", env=env)
        export = work / "audit-export.jsonl"
        medvault("audit", "export", "--since", "1h", "--output", str(export), env=env)
        records = [json.loads(line) for line in export.read_text().splitlines()]
        restore = next(r for r in reversed(records) if r["operation"] == "restore")
        fields = ("user", "host", "destination", "recovery_point", "justification", "status")
        print(f"-> {len(records)} records exported; the restore's answers an auditor:")
        print("   " + json.dumps({k: restore[k] for k in fields}))
        say("Run history: the catalog, caught up from the repository's audit records")
        medvault("runs", "--limit", "5", env=env)
        medvault("stats", "--days", "1", env=env)
        say("Files demo finished")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
