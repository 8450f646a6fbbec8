"""PostgreSQL knowledge shared by the sources, recovery and drills: LSNs and WAL file names
(lsn.py), timelines and their history files (timelines.py), what a WAL segment holds
(walrecords.py), what a data directory tells without a server (datadir.py), PostgreSQL's
programs (programs.py), connections and queries with one-line errors (server.py), and the
facts a PostgreSQL snapshot records (facts.py).

Nothing here knows the repository's engine, the files pipeline or the CLI, and nothing heavy
is imported at module level: `wal-push` loads parts of this package once per segment.
"""
