"""`medvault alerts test`: a test alert through every channel of `[notify]` (the work is in
medvault.service.notify). One line per channel and target; exits 0 when every one delivered,
26 (NotificationFailed) otherwise. Meant to be scheduled: a procedure asks for a weekly test.
"""

from __future__ import annotations

import typer

from medvault.cli.context import obtain, print_json


def test(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    severity: str = typer.Option(
        "critical", "--severity", help="The test alert's severity: warning, critical, emergency."
    ),
) -> None:
    """Send a clearly marked test alert through every configured notification channel.
    Exits 26 when any channel did not deliver it."""
    from medvault.service.notify import AlertTestOptions, alerts_test, failed

    report = alerts_test(obtain(ctx).session, AlertTestOptions(severity=severity))
    if as_json:
        print_json(report.as_dict())
    else:
        for d in report.deliveries:
            outcome = f"ok ({d.sent} sent)" if d.ok else f"FAILED: {d.error}"
            print(f"{d.channel:<12} {d.target}  {outcome}")
        delivered = len(report.deliveries) - len(report.failed)
        print(f"test alert delivered to {delivered} of {len(report.deliveries)} target(s)")
    if not report.ok:
        raise failed(report)
