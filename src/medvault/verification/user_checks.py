"""The user's checks of a restored copy (`[source.NAME.drill]`): SQL whose first value must
be true. Physical and logical drills run them the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medvault.errors import first_line

if TYPE_CHECKING:
    from medvault.verification.drills import Check


def run_user_checks(conn: Any, queries: tuple[str, ...], add: Callable[[Check], None]) -> None:
    """Each query passes when its first value is true; an error or no row fails it."""
    import psycopg

    from medvault.verification.drills import Check, elapsed

    for query in queries:
        began = time.monotonic()
        try:
            row = conn.execute(query).fetchone()
        except psycopg.Error as exc:
            add(Check(f"check: {query}", False, first_line(exc), elapsed(began)))
            continue
        value = row[0] if row else None
        add(Check(f"check: {query}", value is True, f"returned {value!r}", elapsed(began)))
