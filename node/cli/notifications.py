"""`ctnode notifications`: triage notifications as an operator sees them (list, show, retry)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from sqlalchemy import Engine

from node.cli.common import ConfigOpt, JsonOpt, console, dump_json, fmt_time, open_database, settings_from
from node.db.schema import Notification
from node.events import DeliveryState
from node.notify.outbox import get_notification, list_notifications, requeue

app = typer.Typer(help="Triage results told (or to be told) to the RIS, FHIR servers and webhooks.",
                  no_args_is_help=True)


def _engine(config: Path | None) -> Engine:
    return open_database(settings_from(config))


def notification_row(n: Notification) -> dict[str, Any]:
    """A notification as `list --json`, `show --json` and `runs show` give it (no patient identifier)."""
    return {"id": n.id, "run_id": n.run_id, "channel": n.channel, "kind": n.kind, "decision": n.decision,
            "revision": n.revision, "replaces_id": n.replaces_id, "state": n.state, "attempts": n.attempts,
            "last_error": n.last_error, "acknowledgement": n.acknowledgement,
            "study_instance_uid": n.study_instance_uid, "created_at": n.created_at,
            "next_attempt_at": n.next_attempt_at, "acknowledged_at": n.acknowledged_at, "notify_s": n.notify_s}


@app.command("list")
def notifications_list(
    config: ConfigOpt = None,
    state: Annotated[Optional[DeliveryState], typer.Option(help="Only rows in this state.")] = None,
    channel: Annotated[Optional[str], typer.Option(help="Only rows for this channel.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows, newest first.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Notifications: channel, decision, revision, state, attempts, time to acknowledgement."""
    rows = list_notifications(_engine(config), state=state, channel=channel, limit=limit)
    if as_json:
        dump_json([notification_row(n) for n in rows])
        return
    table = Table("id", "run", "channel", "decision", "revision", "state", "attempts", "acknowledged", "notify s",
                  "last error")
    for n in rows:
        seconds = n.notify_s
        table.add_row(str(n.id), str(n.run_id), n.channel, n.decision, n.revision, n.state, str(n.attempts),
                      fmt_time(n.acknowledged_at), "" if seconds is None else f"{seconds:.2f}", n.last_error or "")
    console.print(table)


@app.command("show")
def notifications_show(
    notification_id: Annotated[int, typer.Argument(help="Notification id (from `ctnode notifications list`).")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One notification, what it says, and every attempt with the reply."""
    n = get_notification(_engine(config), notification_id)
    if n is None:
        console.print(f"[red]no notification {notification_id}[/red]")
        raise typer.Exit(1)
    attempts = [{"at": a.at, "outcome": a.outcome, "error": a.error, "response": a.response} for a in n.attempt_log]
    if as_json:
        dump_json({**notification_row(n), "payload": n.payload, "attempt_log": attempts})
        return
    seconds = n.notify_s
    console.print(f"[bold]notification {n.id}[/bold] to {n.channel} ({n.kind}): {n.decision}, {n.revision}"
                  + (f" of {n.replaces_id}" if n.replaces_id else "") + f"; {n.state} after {n.attempts} attempt(s)"
                  + ("" if seconds is None else f", acknowledged {seconds:.2f} s after the last image"))
    console.print(f"run {n.run_id}, study {n.study_instance_uid}: {n.payload.get('reason') or ''}")
    table = Table("at", "outcome", "error", "response")
    for a in attempts:
        table.add_row(fmt_time(a["at"]), a["outcome"], a["error"] or "", (a["response"] or "")[:120])
    console.print(table)


@app.command("retry")
def notifications_retry(
    notification_id: Annotated[int, typer.Argument(help="Id of a dead-lettered notification.")],
    config: ConfigOpt = None,
) -> None:
    """Requeue a dead-lettered notification: sent again at once (same message identity), fresh attempt count."""
    engine = _engine(config)
    if requeue(engine, notification_id):
        console.print(f"notification {notification_id} requeued")
        return
    found = get_notification(engine, notification_id)
    console.print(f"[red]no notification {notification_id}[/red]" if found is None
                  else f"[red]notification {notification_id} is {found.state}, not dead-lettered[/red]")
    raise typer.Exit(1)
