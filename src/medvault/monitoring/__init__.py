"""What `serve`, `metrics`, `alerts` and `status` watch: facts gathered by the service
(facts.py), alert rules over them (alerts.py), Prometheus metrics (metrics.py) and the
channels alerts go out through (notify.py). Pure logic: nothing here opens a repository or
reads medvault.toml; the service hands in what it gathered and the settings."""
