"""Where medvault keeps state of its own on a host: the catalog (an index of the
repositories' records, rebuilt from them at will) and audit records waiting for a
repository to take them.

MEDVAULT_STATE_DIR names it outright; otherwise root (a cron job, the service) uses
/var/lib/medvault, as daemons do, and anyone else $XDG_STATE_HOME/medvault, by default
~/.local/state/medvault. The shell reads its environment and passes it in: nothing here reads
os.environ on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

SYSTEM_STATE_DIR = Path("/var/lib/medvault")


def default_state_dir(environ: Mapping[str, str], uid: int) -> Path:
    explicit = environ.get("MEDVAULT_STATE_DIR")
    if explicit:
        return Path(explicit)
    if uid == 0:
        return SYSTEM_STATE_DIR
    xdg = environ.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "medvault"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "medvault"


def ensure_state_dir(path: Path) -> Path:
    """Made private to its owner (the catalog lists who restored what, and when)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
