"""Redis's own rules: the RESP protocol, the replication handshake that carries an RDB
snapshot, the RDB's framing and the facts a snapshot records, and scratch `redis-server`
processes. Imports nothing of medvault's layers (errors and processes beside them only)."""
