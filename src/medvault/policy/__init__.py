"""Policy: retention (which snapshots to keep) and legal holds."""
