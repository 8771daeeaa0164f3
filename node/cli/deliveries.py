"""`ctnode deliveries`: the outbox as an operator sees it (list, show, retry) and the delivery loop on its own (run)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from sqlalchemy import Engine

from node.cli.common import ConfigOpt, JsonOpt, console, dump_json, fmt_time, open_database, settings_from
from node.config import Settings
from node.db.schema import Delivery
from node.delivery import get_delivery, list_deliveries, requeue, run_delivery
from node.events import DeliveryState
from node.signals import Termination

app = typer.Typer(help="Results sent (or to be sent) to the PACS and other destinations.", no_args_is_help=True)



def _load(config: Path | None) -> Settings:
    return settings_from(config)


def _engine(config: Path | None) -> Engine:
    return open_database(_load(config))


def _row(d: Delivery) -> dict[str, Any]:
    return {"id": d.id, "run_id": d.run_id, "destination": d.destination, "state": d.state, "attempts": d.attempts,
            "last_status": d.last_status, "last_error": d.last_error, "sop_class_uid": d.sop_class_uid,
            "sop_instance_uid": d.sop_instance_uid, "study_instance_uid": d.study_instance_uid, "path": d.path,
            "created_at": d.created_at, "next_attempt_at": d.next_attempt_at, "acknowledged_at": d.acknowledged_at}


def _status(value: int | None) -> str:
    return "" if value is None else f"0x{value:04X}"


@app.command("list")
def deliveries_list(
    config: ConfigOpt = None,
    state: Annotated[Optional[DeliveryState], typer.Option(help="Only rows in this state.")] = None,
    destination: Annotated[Optional[str], typer.Option(help="Only rows for this destination.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows, newest first.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Outbox rows: destination, state, attempts, last status, acknowledgement."""
    rows = list_deliveries(_engine(config), state=state, destination=destination, limit=limit)
    if as_json:
        dump_json([_row(d) for d in rows])
        return
    table = Table("id", "run", "destination", "state", "attempts", "last status", "SOP Instance UID", "acknowledged",
                  "next attempt", "last error")
    for d in rows:
        table.add_row(str(d.id), str(d.run_id or ""), d.destination, d.state, str(d.attempts), _status(d.last_status),
                      d.sop_instance_uid, fmt_time(d.acknowledged_at),
                      fmt_time(d.next_attempt_at) if d.state == DeliveryState.PENDING else "", d.last_error or "")
    console.print(table)


@app.command("show")
def deliveries_show(
    delivery_id: Annotated[int, typer.Argument(help="Delivery id (from `ctnode deliveries list`).")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One outbox row and every attempt made for it."""
    d = get_delivery(_engine(config), delivery_id)
    if d is None:
        console.print(f"[red]no delivery {delivery_id}[/red]")
        raise typer.Exit(1)
    attempts = [{"at": a.at, "outcome": a.outcome, "status": a.status, "error": a.error} for a in d.attempt_log]
    if as_json:
        dump_json({**_row(d), "attempt_log": attempts})
        return
    console.print(f"[bold]delivery {d.id}[/bold] to {d.destination}: {d.state} after {d.attempts} attempt(s)")
    console.print(f"object {d.sop_instance_uid} ({d.sop_class_uid}) of study {d.study_instance_uid}, run {d.run_id}")
    console.print(f"file {d.path}")
    table = Table("at", "outcome", "status", "error")
    for a in attempts:
        table.add_row(fmt_time(a["at"]), a["outcome"], _status(a["status"]), a["error"] or "")
    console.print(table)


@app.command("retry")
def deliveries_retry(
    delivery_id: Annotated[int, typer.Argument(help="Id of a dead-lettered delivery.")],
    config: ConfigOpt = None,
) -> None:
    """Requeue a dead-lettered delivery: it is sent again at once, with a fresh attempt count."""
    engine = _engine(config)
    if requeue(engine, delivery_id):
        console.print(f"delivery {delivery_id} requeued")
        return
    found = get_delivery(engine, delivery_id)
    console.print(f"[red]no delivery {delivery_id}[/red]" if found is None
                  else f"[red]delivery {delivery_id} is {found.state}, not dead-lettered[/red]")
    raise typer.Exit(1)


@app.command("run")
def deliveries_run(config: ConfigOpt = None) -> None:
    """Run the delivery loop alone (without the receiver) until SIGTERM/SIGINT."""
    settings = _load(config)
    termination = Termination()
    stop = threading.Event()
    sender = threading.Thread(target=run_delivery, args=(settings, stop), name="delivery")
    sender.start()
    while not termination.wait(3600):
        pass
    stop.set()
    sender.join()


if __name__ == "__main__":
    app()
