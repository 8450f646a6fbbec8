"""`medvault metrics [--textfile DIR]`: every metric in Prometheus' text format, on stdout or
written atomically as DIR/medvault.prom for node_exporter's textfile collector (from cron,
without `serve`). Never prompts: a repository whose credential is not configured is reported
as down (medvault_repository_up 0)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from medvault.cli.context import obtain


def metrics(
    ctx: typer.Context,
    textfile: Path | None = typer.Option(
        None,
        "--textfile",
        metavar="DIR",
        help="Write DIR/medvault.prom (atomically) for node_exporter's textfile collector.",
    ),
) -> None:
    """Every medvault metric in Prometheus' text format (docs/metrics.md)."""
    cli = obtain(ctx)
    cli.interactive = False
    if textfile is None:
        from medvault.service.metrics import metrics_text

        sys.stdout.buffer.write(metrics_text(cli.session))
        return
    from medvault.service.metrics import write_textfile

    write_textfile(cli.session, textfile)


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
