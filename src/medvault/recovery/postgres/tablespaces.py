"""Tablespaces of a restored cluster: where each goes (its original location or a remap),
whether that place may be written, and tablespace_map pointed at it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from medvault.errors import RestoreTargetError, UsageError
from medvault.postgres.datadir import running_postmaster
from medvault.postgres.facts import PhysicalFacts
from medvault.recovery.postgres.target_dir import entries

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot


def tablespace_locations(snapshot: Snapshot, remap: dict[str, str]) -> dict[str, str]:
    """oid -> directory to restore each tablespace into."""
    spaces = dict(PhysicalFacts.of(snapshot).tablespaces)
    for oid in remap:
        if oid not in spaces:
            known = ", ".join(sorted(spaces)) or "none"
            raise UsageError(
                f"--tablespace {oid}=...: the backup has no tablespace {oid} (it has: {known})"
            )
    out = {}
    for oid, location in spaces.items():
        target = os.path.abspath(remap.get(oid, location))
        if not os.path.isabs(remap.get(oid, location)):
            raise UsageError(f"--tablespace {oid}: give an absolute directory")
        out[oid] = target
    return out


def parse_tablespace_options(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        oid, sep, directory = item.partition("=")
        if not sep or not oid.isdigit() or not directory:
            raise UsageError(f"--tablespace {item!r}: expected OID=DIR")
        out[oid] = directory
    return out


def check_tablespaces(
    snapshot: Snapshot, locations: dict[str, str], pgdata: str, *, delta: bool, force: bool
) -> None:
    facts = PhysicalFacts.of(snapshot)
    original = dict(facts.tablespaces)
    source_pgdata = facts.pgdata or (snapshot.paths or ("",))[0]
    production_up = bool(source_pgdata) and running_postmaster(source_pgdata) is not None
    for oid, location in locations.items():
        if os.path.realpath(location).startswith(os.path.realpath(pgdata) + os.sep):
            raise UsageError(f"tablespace {oid}: {location} is inside the data directory")
        if not entries(location):
            continue
        if (
            production_up
            and location == original.get(oid)
            and os.path.realpath(pgdata) != os.path.realpath(source_pgdata)
        ):
            raise RestoreTargetError(
                f"tablespace {oid} would be restored into {location}, which the running "
                f"server of {source_pgdata} uses; move it with --tablespace {oid}=DIR"
            )
        if not (delta or force):
            raise RestoreTargetError(
                f"tablespace {oid} location {location} is not empty; move it with "
                f"--tablespace {oid}=DIR, or pass --delta or --force"
            )


def rewrite_tablespace_map(text: str, locations: dict[str, str]) -> str:
    """tablespace_map lines are `OID PATH`: point each at its restored location."""
    out = []
    for line in text.splitlines():
        oid, _, _path = line.partition(" ")
        out.append(f"{oid} {locations[oid]}" if oid in locations else line)
    return "\n".join(out) + ("\n" if out else "")
