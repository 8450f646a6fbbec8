"""Restore a physical snapshot into a data directory and set up its recovery. Every check that
can fail runs before anything is written; pg_control is written last."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medvault.errors import RecoveryFailed, RestoreTargetError, UsageError
from medvault.postgres.datadir import PG_CONTROL
from medvault.postgres.facts import KIND_PHYSICAL, PhysicalFacts
from medvault.recovery.files import RestoreResult, restore_files
from medvault.recovery.postgres.server import WAIT_TIMEOUT_S, Reached, ServerAccess, start_and_wait
from medvault.recovery.postgres.settings import prepare_for_recovery, recovery_block
from medvault.recovery.postgres.tablespaces import check_tablespaces, tablespace_locations
from medvault.recovery.postgres.target import RecoveryTarget, check_target_reachable
from medvault.recovery.postgres.target_dir import (
    check_data_directory,
    check_port_free,
    empty_directory,
)
from medvault.recovery.postgres.walchain import WalRange, check_wal_chain

if TYPE_CHECKING:
    from medvault.repository.records import Snapshot
    from medvault.repository.repo import Repository


@dataclass(frozen=True)
class PhysicalRestoreOptions:
    pgdata: str
    target: RecoveryTarget
    restore_command: str
    standby: bool = False
    port: int | None = None
    delta: bool = False
    force: bool = False
    keep_archiving: bool = False
    tablespaces: dict[str, str] = field(default_factory=dict)  # oid -> new location
    start: bool = False
    pg_bin: str | None = None
    wait_timeout: float = WAIT_TIMEOUT_S
    # What the started server needs beyond a minimal environment: its restore_command's
    # credentials for the store (childenv.store_access), never a passphrase.
    server_environment: dict[str, str] = field(default_factory=dict)


@dataclass
class PhysicalRestoreResult:
    snapshot: str
    pgdata: str
    files: RestoreResult
    tablespaces: dict[str, str]
    wal: WalRange
    settings: list[str]
    signal: str
    reached: Reached | None = None


def _add(total: RestoreResult, part: RestoreResult) -> None:
    total.files += part.files
    total.files_unchanged += part.files_unchanged
    total.removed += part.removed
    total.dirs += part.dirs
    total.symlinks += part.symlinks
    total.bytes_written += part.bytes_written
    total.skipped += part.skipped


def restore_physical(
    repo: Repository,
    snapshot: Snapshot,
    options: PhysicalRestoreOptions,
    on_progress: Callable[[int], None] | None = None,
) -> PhysicalRestoreResult:
    if snapshot.kind != KIND_PHYSICAL:
        raise RestoreTargetError(
            f"snapshot {snapshot.short_id} is a {snapshot.kind} snapshot, not a physical backup"
        )
    facts = PhysicalFacts.of(snapshot)
    if not facts.backup_label:
        raise RecoveryFailed(
            f"snapshot {snapshot.short_id} lacks its backup label; it is incomplete"
        )
    started = time.monotonic()
    pgdata = os.path.abspath(options.pgdata)
    target = options.target
    pg_ctl = None
    if options.start:
        if os.geteuid() == 0:
            raise UsageError(
                "refusing to start PostgreSQL as root; run medvault as the user owning the data "
                "directory (usually postgres), e.g. `runuser -u postgres -- medvault ...`"
            )
        if options.port is None:
            raise UsageError("--start needs --port P: the port the restored server listens on")
        from medvault.postgres.programs import find_program

        pg_ctl = find_program("pg_ctl", options.pg_bin, facts.major)
    if options.port is not None:
        check_port_free(options.port)
    check_target_reachable(snapshot, target)
    check_data_directory(pgdata, snapshot, delta=options.delta, force=options.force)
    locations = tablespace_locations(snapshot, options.tablespaces)
    check_tablespaces(snapshot, locations, pgdata, delta=options.delta, force=options.force)
    wal = check_wal_chain(repo, snapshot, target)

    # Checks done: from here on, files are written. pg_control comes last: until it is there
    # the directory cannot be started by mistake, which is why the other files may be
    # written in place rather than under temporary names.
    if options.force:
        empty_directory(pgdata)
        for location in locations.values():
            empty_directory(location)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(pgdata, PG_CONTROL))
    total = RestoreResult()

    def restore_tree(target_dir: str, root: str, **how: Any) -> None:
        part = restore_files(
            repo,
            snapshot,
            target_dir,
            root=root,
            kinds=(KIND_PHYSICAL,),
            on_progress=on_progress,
            **how,
        )
        _add(total, part)

    restore_tree(pgdata, "pgdata", delta=options.delta, atomic=False, hold_back=(PG_CONTROL,))
    for oid, location in locations.items():
        restore_tree(location, f"tablespaces/{oid}", delta=options.delta, atomic=False)
    block = recovery_block(
        snapshot,
        target,
        options.restore_command,
        port=options.port,
        keep_archiving=options.keep_archiving,
    )
    signal = prepare_for_recovery(pgdata, snapshot, locations, block, options.standby)
    restore_tree(pgdata, "pgdata", includes=(PG_CONTROL,), overwrite=True)
    total.duration = time.monotonic() - started
    result = PhysicalRestoreResult(snapshot.id, pgdata, total, locations, wal, block, signal)
    if options.start:
        assert pg_ctl is not None and options.port is not None
        result.reached = start_and_wait(
            pgdata,
            pg_ctl,
            options.port,
            "standby"
            if options.standby
            else target.action
            if target.kind != "latest"
            else "promote",
            options.wait_timeout,
            access=ServerAccess(carries=options.server_environment),
        )
    return result
