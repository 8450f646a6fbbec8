"""`medvault alerts`: what fires now, silences, and `alerts test` (cli/notify_cmd.py)."""

from __future__ import annotations

import typer

from medvault.cli import notify_cmd

alerts_app = typer.Typer(
    help="Alerts: what fires now, silences, and a test through every channel.",
    no_args_is_help=True,
)
alerts_app.command("test")(notify_cmd.test)


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
