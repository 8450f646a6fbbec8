"""The alerts' part of the catalog: the states of firing alerts between evaluations, the
silences, and the history of transitions an auditor lists (tables in models.py, revision
0002). Rows come and go as plain dicts (this layer does not know monitoring's classes); times
go in as aware datetimes and come out as aware UTC ones.

`catalog rebuild` keeps these tables: they are not in the audit trail (a silence's run
record is), so a rebuild of the run history must not lose them (`carry_over` copies them into
the fresh SQLite file a rebuild makes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from medvault.catalog.models import AlertHistoryRow, AlertSilenceRow, AlertStateRow, Base
from medvault.catalog.store import Catalog, naive_utc
from medvault.errors import CatalogUnavailable, first_line

STATES = Base.metadata.tables[AlertStateRow.__tablename__]
SILENCES = Base.metadata.tables[AlertSilenceRow.__tablename__]
HISTORY = Base.metadata.tables[AlertHistoryRow.__tablename__]
_TIMES = ("started", "last_sent", "created", "until", "ended", "at")


class AlertStore:
    """The alert tables of an open catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.engine = catalog.engine

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise CatalogUnavailable(
                f"the alerts in the catalog at {self.catalog.url} could not be {doing}: "
                f"{first_line(cause)}"
            ) from None

    def states(self) -> list[dict[str, Any]]:
        with self._errors("read"), self.engine.connect() as conn:
            return [_out(dict(row._mapping)) for row in conn.execute(select(STATES))]

    def save(
        self, states: Iterable[Mapping[str, Any]], transitions: Iterable[Mapping[str, Any]]
    ) -> None:
        """The states after an evaluation replace those before, and its transitions join the
        history, in one transaction: a reader sees one evaluation or the next."""
        rows = [_in(state) for state in states]
        events = [_in(transition) for transition in transitions]
        with self._errors("written"), self.engine.begin() as conn:
            conn.execute(delete(STATES))
            if rows:
                conn.execute(STATES.insert(), rows)
            if events:
                conn.execute(HISTORY.insert(), events)

    def record(self, transitions: Iterable[Mapping[str, Any]]) -> None:
        events = [_in(transition) for transition in transitions]
        if events:
            with self._errors("written"), self.engine.begin() as conn:
                conn.execute(HISTORY.insert(), events)

    def add_silence(self, silence: Mapping[str, Any]) -> None:
        with self._errors("written"), self.engine.begin() as conn:
            conn.execute(SILENCES.insert().values(**_in(silence)))

    def silences(self, *, active_at: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Silences, newest first; with `active_at`, only those in force then (not lifted,
        not expired)."""
        query = select(SILENCES).order_by(SILENCES.c.created.desc(), SILENCES.c.id)
        if active_at is not None:
            moment = naive_utc(active_at)
            query = query.where(
                SILENCES.c.until > moment,
                SILENCES.c.created <= moment,
                or_(SILENCES.c.ended.is_(None), SILENCES.c.ended > moment),
            )
        with self._errors("read"), self.engine.connect() as conn:
            return [_out(dict(row._mapping)) for row in conn.execute(query)]

    def silence(self, silence_id: str) -> dict[str, Any] | None:
        query = select(SILENCES).where(SILENCES.c.id == silence_id)
        with self._errors("read"), self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _out(dict(row._mapping)) if row is not None else None

    def end_silence(self, silence_id: str, at: dt.datetime, by: str) -> None:
        query = (
            update(SILENCES)
            .where(SILENCES.c.id == silence_id, SILENCES.c.ended.is_(None))
            .values(ended=naive_utc(at), ended_by=by)
        )
        with self._errors("written"), self.engine.begin() as conn:
            conn.execute(query)

    def history(
        self,
        *,
        since: dt.datetime | None = None,
        rule: str | None = None,
        source: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Transitions, newest first."""
        query = select(HISTORY).order_by(HISTORY.c.at.desc(), HISTORY.c.id.desc())
        if since is not None:
            query = query.where(HISTORY.c.at >= naive_utc(since))
        if rule is not None:
            query = query.where(HISTORY.c.rule == rule)
        if source is not None:
            query = query.where(or_(HISTORY.c.source == source, HISTORY.c.repository == source))
        if limit is not None:
            query = query.limit(limit)
        with self._errors("read"), self.engine.connect() as conn:
            return [_out(dict(row._mapping)) for row in conn.execute(query)]


def _in(values: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(values)
    for name in _TIMES:
        if isinstance(row.get(name), dt.datetime):
            row[name] = naive_utc(row[name])
    if "labels" in row:
        row["labels"] = dict(row["labels"] or {})
    return row


def _out(values: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(values)
    for name in _TIMES:
        if isinstance(row.get(name), dt.datetime):
            row[name] = row[name].replace(tzinfo=dt.UTC)
    return row


def carry_over(old: Catalog, new: Catalog) -> None:
    """Copy every alert state, silence and history row of `old` into `new` (a fresh catalog
    a rebuild puts in its place), in one transaction."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(AlertStore(old)._errors("read"))
        source = stack.enter_context(old.engine.connect())
        target = stack.enter_context(new.engine.begin())
        for table in (STATES, SILENCES, HISTORY):
            rows = [dict(row._mapping) for row in source.execute(select(table))]
            target.execute(delete(table))
            if rows:
                target.execute(table.insert(), rows)
