"""When jobs fire and the loop that runs them (`medvault serve`): cron expressions and
intervals in a time zone, catch-up after downtime, no job twice at once. Pure logic over an
injectable clock; the service turns medvault.toml into jobs and runs them."""
