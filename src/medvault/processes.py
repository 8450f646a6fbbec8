"""Telling whether a process that left a record (a lock, a drill's scratch) still runs.

A pid means something only in the boot and PID namespace where it was taken: two containers
on one host share the hostname and may both run their program as pid 1. So a record names
its writer's namespace, and a pid is judged only by a reader in that same namespace. Within
it, the process start time (field 22 of /proc/PID/stat) tells the writer from a later process
that got the same pid.
"""

from __future__ import annotations

import os


def process_start(pid: int) -> str:
    """Clock ticks since boot at which process `pid` started; "" when it does not run."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def host_namespace() -> str:
    """This kernel boot and PID namespace ("" where /proc cannot tell)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            boot_id = boot.read().strip()
        return f"{boot_id}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def gone(pid: int, started: str) -> bool:
    """Whether the process `pid` that started at `started` has ended (this namespace only)."""
    return process_start(pid) != started
