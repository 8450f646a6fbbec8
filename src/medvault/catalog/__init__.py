"""The catalog: a queryable index of run records (SQLAlchemy 2; SQLite by default, PostgreSQL
by URL so that several hosts share one). The repositories' audit records are the truth; the
catalog is rebuilt from them at will.

Nothing here is imported at package level: SQLAlchemy costs more to import than a wal-push
takes, so `store.py` and `models.py` are imported only where a catalog is opened.
"""
