"""`medvault audit verify` and `medvault audit export`: the tamper-evident audit trail, for
an auditor and a SIEM. The work is in medvault.service.audit.

Exit codes: `verify` 0 when every chain verifies, 24 (AuditTrailBroken) when a record was
edited, deleted, reordered, moved or cut off; `export` 0, or the error's code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from medvault.cli.context import obtain, print_json

audit_app = typer.Typer(
    help="The audit trail: verify its chains, export its records.", no_args_is_help=True
)


@audit_app.command("verify")
def verify(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every audit record: sealed under its own name, its MAC, its link to the record
    before, no gaps, and no chain cut below a head this host wrote. Exits 24 on damage."""
    from medvault.service.audit import audit_verify, broken

    result = audit_verify(obtain(ctx).session)
    report = result.report
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "records": report.records,
                "chains": [
                    {
                        "chain": c.chain,
                        "records": c.records,
                        "head": c.head,
                        "hosts": list(c.hosts),
                        "anchored_at": result.anchors.get(c.chain),
                    }
                    for c in report.chains
                ],
                "problems": list(report.problems),
            }
        )
    else:
        for chain in report.chains:
            hosts = ", ".join(chain.hosts) or "-"
            anchor = result.anchors.get(chain.chain)
            anchored = f", written here up to {anchor}" if anchor is not None else ""
            print(
                f"chain {chain.chain} ({hosts}): {chain.records} record(s), head "
                f"{chain.head}{anchored}"
            )
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
        if report.ok:
            print(
                f"audit trail verified: {report.records} record(s) in {len(report.chains)} chain(s)"
            )
    if not report.ok:
        raise broken(result)


@audit_app.command("export")
def export(
    ctx: typer.Context,
    since: str = typer.Option(
        ..., "--since", metavar="DATE", help="From this date or time (UTC), or a span back: 30d."
    ),
    until: str | None = typer.Option(None, "--until", metavar="DATE", help="Up to (excluded)."),
    output_format: str = typer.Option("jsonl", "--format", help="jsonl or csv."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write to this file (default: standard output)."
    ),
) -> None:
    """The audit records of a period, oldest first: JSON Lines or CSV, for an auditor or a
    SIEM."""
    from medvault.service.audit import ExportOptions, audit_export

    options = ExportOptions(since=since, until=until, format=output_format)
    session = obtain(ctx).session
    if output is None:
        audit_export(session, options, sys.stdout.write)
        return
    with output.open("w", encoding="utf-8", newline="") as stream:
        output.chmod(0o600)  # who restored what, and why
        audit_export(session, options, stream.write)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
