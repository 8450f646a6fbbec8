"""PostgreSQL snapshots: their kinds."""

from __future__ import annotations

KIND_PHYSICAL = "postgres.physical"
KIND_LOGICAL = "postgres.logical"
