"""Alembic's environment for the catalog: always run on the connection medvault opened
(catalog/store.py passes it in `config.attributes`), never from alembic.ini or offline."""

from __future__ import annotations

from alembic import context

from medvault.catalog.models import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("the catalog's migrations run through medvault.catalog.store only")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite alters a table by copying it: a later revision may need that.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
