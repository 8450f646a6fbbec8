"""`medvault alerts`: what fires now, silences and the alert history (docs/alerts.md). The
work is in medvault.service.alerting; `alerts_app` is the group other commands of the same
family join (`alerts test` is cli/notify_cmd.py's)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Any

import typer

from medvault.cli import notify_cmd
from medvault.cli.context import obtain, print_json

if TYPE_CHECKING:
    from medvault.service.alerting import ActiveAlert, SilenceInfo

alerts_app = typer.Typer(
    help="Alerts: what fires now, silences, history, and a test through every channel.",
    invoke_without_command=True,
)
alerts_app.command("test")(notify_cmd.test)


@alerts_app.callback()
def firing(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the alerts as JSON."),
) -> None:
    """The alerts firing now, evaluated from the run history, the repositories and the
    sources (nothing is sent and nothing kept: `serve` does that)."""
    if ctx.invoked_subcommand is not None:
        return
    from medvault.service.alerting import evaluate
    from medvault.service.observe import gather

    cli = obtain(ctx)
    cli.interactive = False  # a look never prompts; a repository it cannot open is an alert
    session = cli.session
    result = evaluate(session, gather(session), record=False)
    if as_json:
        print_json(
            {
                "taken": result.taken.isoformat(timespec="seconds"),
                "firing": [_alert_doc(a) for a in result.firing],
                "silenced": [_alert_doc(a) for a in result.silenced],
                "problems": list(result.problems),
            }
        )
        return
    if not result.firing and not result.silenced:
        print("no alerts firing")
    for alert in (*result.firing, *result.silenced):
        held = f"  (silenced by {alert.silenced_by})" if alert.silenced_by else ""
        print(f"{alert.severity.upper():<9}  {alert.key:<36}  {_since(alert.started)}  ", end="")
        print(f"{alert.summary}{held}")
    for problem in result.problems:
        print(f"not gathered: {problem}")


@alerts_app.command("silence")
def silence(
    ctx: typer.Context,
    rule: str = typer.Argument(..., help="The rule to silence: backup_stale, wal_lag, …"),
    source: str | None = typer.Option(
        None, "--source", "-s", help="Only alerts about this source (or repository)."
    ),
    duration: str = typer.Option(..., "--for", metavar="DURATION", help="How long: 2h, 3d."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the audit trail)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Hold back alerts of RULE for a while, with a reason; recorded in the audit trail."""
    from medvault.service.alerting import SilenceOptions
    from medvault.service.alerting import silence as hold

    result = hold(obtain(ctx).session, SilenceOptions(rule, source, duration, reason))
    info = result.silence
    if as_json:
        print_json(_silence_doc(info))
        return
    about = f" about {info.source}" if info.source else ""
    print(
        f"silence {info.id}: {info.rule}{about} not sent until "
        f"{info.until.strftime('%Y-%m-%d %H:%M')} UTC"
    )


@alerts_app.command("unsilence")
def unsilence(
    ctx: typer.Context,
    silence_id: str = typer.Argument(..., metavar="ID", help="The silence (or its prefix)."),
) -> None:
    """Lift a silence before its time; recorded in the audit trail."""
    from medvault.service.alerting import UnsilenceOptions
    from medvault.service.alerting import unsilence as lift

    info = lift(obtain(ctx).session, UnsilenceOptions(silence_id)).silence
    print(f"silence {info.id} lifted: {info.rule} alerts are sent again")


@alerts_app.command("silences")
def silences(
    ctx: typer.Context,
    every: bool = typer.Option(False, "--all", help="Also silences over (expired, lifted)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The silences in force, newest first."""
    from medvault.service.alerting import SilencesOptions
    from medvault.service.alerting import silences as listed

    found = listed(obtain(ctx).session, SilencesOptions(all=every)).silences
    if as_json:
        print_json([_silence_doc(s) for s in found])
        return
    print(f"{'ID':<12}  {'RULE':<22}  {'SOURCE':<12}  {'UNTIL (UTC)':<16}  {'BY':<20}  REASON")
    for s in found:
        until = s.until.strftime("%Y-%m-%d %H:%M")
        if s.ended is not None and s.ended < s.until:
            until = f"lifted {s.ended.strftime('%m-%d %H:%M')}"
        print(
            f"{s.id:<12}  {s.rule:<22}  {s.source or '*':<12}  {until:<16}  "
            f"{s.user + '@' + s.host:<20}  {s.reason}"
        )
    print(f"{len(found)} silence(s)")


@alerts_app.command("history")
def history(
    ctx: typer.Context,
    since: str | None = typer.Option(
        None, "--since", help="From a date or time (UTC), or a duration back: 7d."
    ),
    rule: str | None = typer.Option(None, "--rule", help="Only this rule."),
    source: str | None = typer.Option(None, "--source", "-s", help="Only this source."),
    limit: int = typer.Option(100, "--limit", "-n", help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """How alerts fired, changed severity, were silenced and resolved, newest first."""
    from medvault.service.alerting import AlertHistoryOptions, alert_history
    from medvault.service.history import parse_since

    start = parse_since(since, dt.datetime.now(dt.UTC)) if since is not None else None
    result = alert_history(obtain(ctx).session, AlertHistoryOptions(start, rule, source, limit))
    if as_json:
        print_json([{**dataclasses.asdict(e), "at": _iso(e.at)} for e in result.entries])
        return
    print(f"{'AT (UTC)':<19}  {'TRANSITION':<16}  {'SEVERITY':<9}  {'ALERT':<36}  SUMMARY")
    for e in result.entries:
        print(
            f"{e.at.strftime('%Y-%m-%d %H:%M:%S')}  {e.transition:<16}  {e.severity:<9}  "
            f"{e.key:<36}  {e.summary}"
        )
    print(f"{len(result.entries)} transition(s)")


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def _since(moment: dt.datetime) -> str:
    return f"since {moment.strftime('%Y-%m-%d %H:%M')}"


def _alert_doc(alert: ActiveAlert) -> dict[str, Any]:
    return {**dataclasses.asdict(alert), "started": _iso(alert.started)}


def _silence_doc(info: SilenceInfo) -> dict[str, Any]:
    doc = dataclasses.asdict(info)
    for name in ("created", "until", "ended"):
        doc[name] = _iso(doc[name])
    return doc


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
