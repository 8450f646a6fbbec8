"""PostgreSQL sources: logical dumps, physical backups and the WAL archive."""
