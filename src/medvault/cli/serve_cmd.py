"""`medvault serve`: the long-running service. Schedules fire jobs, alerts are evaluated and
sent, and /metrics and /healthz answer on the listen address, until SIGTERM or SIGINT stop
it (running jobs are asked to end cleanly within [serve] stop_timeout)."""

from __future__ import annotations

import logging
import socket
import sys

import typer

from medvault.cli.context import obtain
from medvault.errors import UsageError


def serve(
    ctx: typer.Context,
    listen: str | None = typer.Option(
        None, "--listen", help="HOST:PORT for /metrics and /healthz (default [serve] listen)."
    ),
) -> None:
    """Run the schedules, evaluate and send alerts, and serve /metrics, until stopped."""
    from medvault.config import parse_listen
    from medvault.service.daemon import Daemon

    cli = obtain(ctx)
    cli.shell = "serve"
    cli.interactive = False  # nobody is there to answer a prompt
    cli.keep_keys = True  # a reading a minute must not derive the key every time
    session = cli.session
    if not session.configured:
        raise UsageError("serve needs a medvault.toml (--config FILE): it holds the schedules")
    try:
        host, port = parse_listen(listen or session.settings.serve.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    _log_to_stderr()
    daemon = Daemon(session)
    listener = _bind(host, port)
    import uvicorn

    from medvault.api.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(daemon),
            log_config=None,  # our handler: one line per event, no access log
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    logging.getLogger("medvault.serve").info(
        "listening on %s:%d (/metrics, /healthz)", host, listener.getsockname()[1]
    )
    server.run(sockets=[listener])


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    listener.listen(64)
    listener.set_inheritable(False)
    return listener


def _log_to_stderr() -> None:
    """One line per event on stderr (journald adds the time under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("medvault", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
