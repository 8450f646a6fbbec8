"""Restore a physical PostgreSQL snapshot into a data directory and set up its recovery:
point-in-time (time, LSN, xid, restore point, immediate, latest) or a standby.

Every check that can fail runs before anything is written: the port, the data directory
(empty; or, for --delta, this cluster's and not running), tablespace locations, and the WAL
chain in the archive from the backup's start to the target. Then the files, then the recovery
settings in a marked block of postgresql.auto.conf, then (optionally) the server is started
and watched until recovery ends the way the target action says.

A restored cluster never archives into the production archive unless asked: its
postgresql.conf still carries production's archive_command, so the block turns archive_mode
off (a second cluster pushing the same WAL names would be refused as a conflict at best).

One module per step: target.py (the recovery target), base_backup.py (which backup),
walchain.py and reach.py (the WAL it needs, and how far a time target can reach),
target_dir.py and tablespaces.py (where it goes), settings.py (the recovery settings),
server.py (start and wait), restore.py (all of it in order), restore_points.py (`mark`).
The names below are what the CLI and the drills use.
"""

from medvault.recovery.postgres.base_backup import choose_base_backup, physical_snapshots
from medvault.recovery.postgres.restore import (
    PhysicalRestoreOptions,
    PhysicalRestoreResult,
    restore_physical,
)
from medvault.recovery.postgres.restore_points import RestorePoint, create_restore_point
from medvault.recovery.postgres.server import Reached, ServerAccess, start_and_wait
from medvault.recovery.postgres.settings import write_private_file
from medvault.recovery.postgres.tablespaces import parse_tablespace_options
from medvault.recovery.postgres.target import RecoveryTarget, make_target
from medvault.recovery.postgres.target_dir import check_data_directory, check_port_free
from medvault.recovery.postgres.walchain import WalRange, check_wal_chain

__all__ = [
    "PhysicalRestoreOptions",
    "PhysicalRestoreResult",
    "Reached",
    "RecoveryTarget",
    "RestorePoint",
    "ServerAccess",
    "WalRange",
    "check_data_directory",
    "check_port_free",
    "check_wal_chain",
    "choose_base_backup",
    "create_restore_point",
    "make_target",
    "parse_tablespace_options",
    "physical_snapshots",
    "restore_physical",
    "start_and_wait",
    "write_private_file",
]
