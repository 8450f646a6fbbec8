"""Where medvault.toml is found: --config PATH, else $MEDVAULT_CONFIG, else ./medvault.toml,
else /etc/medvault/medvault.toml. Kept apart from the settings models so that commands run
on --repo alone never import pydantic (start-up time matters for wal-push)."""

from __future__ import annotations

import os
from pathlib import Path

SEARCH_PATH = (Path("medvault.toml"), Path("/etc/medvault/medvault.toml"))


def find_config(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    from_env = os.environ.get("MEDVAULT_CONFIG")
    if from_env:
        return Path(from_env)
    return next((p for p in SEARCH_PATH if p.is_file()), None)
