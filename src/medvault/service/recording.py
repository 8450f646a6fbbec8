"""Run records into the catalog: the observers a shell attaches to its session.

Light on purpose: wal-push imports this module on every push, and only a record it must keep
(a failure) brings in the catalog and SQLAlchemy. A catalog that cannot be opened or written
costs a warning (session.run turns an observer's error into one), never the operation.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medvault.catalog.store import Catalog
    from medvault.service.runs import RunRecord
    from medvault.service.session import Session

CATALOG_FILE = "catalog.db"


def catalog_url(session: Session, *, broken_config_ok: bool = False) -> str | None:
    """`[catalog] url` of medvault.toml, else SQLite in the session's state directory; None
    when there is neither (a shell that keeps no state). `broken_config_ok`: a medvault.toml
    that cannot be read (the run's own error says so) sends the record to the state
    directory's catalog rather than losing it, and adds no second message."""
    from medvault.errors import MedvaultError

    if session.configured:
        try:
            configured = session.settings.catalog.url
        except MedvaultError:
            if not broken_config_ok:
                raise
            configured = None
        if configured:
            return configured
    if session.state_dir is None:
        return None
    from medvault.statedir import ensure_state_dir

    path = ensure_state_dir(session.state_dir) / CATALOG_FILE
    # Made private before SQLite makes it (it names who restored what, and when).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    return f"sqlite:///{path}"


class CatalogObserver:
    """Keeps every run record of a session in the catalog (opened on the first record,
    kept open for the session's later runs)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._catalog: Catalog | None = None
        self._url: str | None = None

    def run_ended(self, record: RunRecord) -> None:
        catalog = self.catalog()
        if catalog is not None:
            catalog.add([record._asdict()])

    def catalog(self) -> Catalog | None:
        url = catalog_url(self.session, broken_config_ok=True)
        if url is None:
            return None
        if self._catalog is None or url != self._url:
            from medvault.catalog.store import Catalog

            if self._catalog is not None:
                self._catalog.close()
            self._catalog = Catalog.open(url)
            self._url = url
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None


class FailuresObserver(CatalogObserver):
    """For wal-push and wal-fetch: their failures are kept one by one; a success (one per
    16 MiB segment) is counted elsewhere, and costs no catalog here."""

    def run_ended(self, record: RunRecord) -> None:
        if record.status != "ok":
            super().run_ended(record)
