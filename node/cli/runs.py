"""`ctnode runs`: detection runs as an operator and an auditor see them (list, show, retry)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from detector.io.context import StudyContext

from node.cli.common import ConfigOpt, JsonOpt, console, dump_json, fmt_time, open_database, settings_from
from node.events import RunMode, RunStatus
from node.pipeline.queue import requeue_run
from node.pipeline.run_records import list_runs, run_record

app = typer.Typer(help="Detection runs: what ran on which study, with which model, and what came of it.",
                  no_args_is_help=True)


@app.command("list")
def runs_list(
    config: ConfigOpt = None,
    status: Annotated[Optional[RunStatus], typer.Option(help="Only runs in this status.")] = None,
    study: Annotated[Optional[str], typer.Option(help="Only runs of this Study Instance UID.")] = None,
    mode: Annotated[Optional[RunMode], typer.Option(help="Only runs in this mode (live, silent, shadow).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs, newest first.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Runs: study, model, mode and version, status, findings, when it was ready and finished."""
    runs = list_runs(open_database(settings_from(config)), status=status, study_instance_uid=study, limit=limit,
                     mode=mode)
    if as_json:
        dump_json(runs)
        return
    table = Table("id", "study", "model", "mode", "v", "status", "attempts", "instances", "findings", "ready",
                  "finished", "trigger / error")
    for r in runs:
        table.add_row(str(r["id"]), r["study_instance_uid"], r["model"], _mode(r["mode"]), str(r["version"]),
                      r["status"], str(r["attempts"]), str(r["instance_count"]), str(r["findings"]), fmt_time(r["ready_at"]),
                      fmt_time(r["finished_at"]), r["error"] or r["trigger"])
    console.print(table)


def _mode(mode: str) -> str:
    """The mode as an operator reads it: a run that is not delivered clinically in capitals (SHADOW, SILENT)."""
    return mode if RunMode(mode).clinical else mode.upper()


@app.command("show")
def runs_show(
    run_id: Annotated[int, typer.Argument(help="Run id (from `ctnode runs list`).")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One run's whole audit record: inputs and digests, model, reasons, findings, outputs, deliveries, stages."""
    record = run_record(open_database(settings_from(config)), run_id)
    if record is None:
        console.print(f"[red]no run {run_id}[/red]")
        raise typer.Exit(1)
    if as_json:
        dump_json(record)
        return
    console.print(f"[bold]run {record['id']}[/bold] of study {record['study_instance_uid']}: {record['model']} "
                  f"v{record['version']}, {_mode(record['mode'])}, {record['status']} after {record['attempts']} "
                  "attempt(s)")
    console.print(f"model {record['model_name']} {record['model_version']} weights sha256 {record['weights_sha256']}")
    console.print(f"{record['instance_count']} inputs, digest {record['input_digest']}; read series "
                  f"{record['series_instance_uid']}; predecessor run {record['predecessor_id']}")
    console.print(f"trigger: {record['trigger']}")
    for line in [*record["routing"], *record["selection"]]:
        console.print(f"  {line}")
    if record["error"]:
        console.print(f"[red]error:[/red] {record['error']}")
    context = StudyContext.from_dict(record["context"])
    console.print(f"patient: {context.patient}")
    for line in context.referral:  # free text, maybe with names: shown here, to the operator, and never logged
        console.print(f"  {escape(line)}")
    if record["decision"]:
        console.print(f"triage: [bold]{record['decision']}[/bold] ({record['decision_reason']})")
    stages = Table("stage", "at", title="stages")
    for stage, at in record["timestamps"].items():
        stages.add_row(stage.removesuffix("_at"), fmt_time(at, precise=True))
    console.print(stages)
    findings = Table("#", "label", "score", "centre LPS (mm)", title="findings")
    for n, f in enumerate(record["findings"], start=1):
        findings.add_row(str(n), f["label"], f"{f['score']:.3f}", ", ".join(f"{v:.1f}" for v in f["centre_mm"]))
    console.print(findings)
    outputs = Table("kind", "SOP Instance UID", "destination", "state", "acknowledged", title="outputs")
    for o in record["outputs"]:
        sent = [d for d in record["deliveries"] if d["sop_instance_uid"] == o["sop_instance_uid"]] or [None]
        for d in sent:
            outputs.add_row(o["kind"], o["sop_instance_uid"], d["destination"] if d else "", d["state"] if d else "",
                            fmt_time(d["acknowledged_at"], precise=True) if d else "")
    console.print(outputs)
    if record["notifications"]:
        told = Table("notification", "channel", "decision", "revision", "state", "attempts", "acknowledged",
                     "notify s", "last error", title="notifications (ctnode notifications show ID)")
        for n in record["notifications"]:
            told.add_row(str(n["id"]), f"{n['channel']} ({n['kind']})", n["decision"], n["revision"], n["state"],
                         str(n["attempts"]), fmt_time(n["acknowledged_at"], precise=True),
                         "" if n["notify_s"] is None else f"{n['notify_s']:.2f}", n["last_error"] or "")
        console.print(told)
    if record["feedback"]:
        reviews = Table("feedback", "reader", "confirmed", "rejected", "edited", "missed", "received", "current",
                        title="readers' reviews (ctnode feedback show ID)")
        for f in record["feedback"]:
            reviews.add_row(str(f["id"]), f["reader"] or "-", str(f["confirmed"]), str(f["rejected"]),
                            str(f["edited"]), str(f["missed"]), fmt_time(f["received_at"]), "yes" if f["current"] else "no")
        console.print(reviews)


@app.command("retry")
def runs_retry(
    run_id: Annotated[int, typer.Argument(help="Id of a failed run.")],
    config: ConfigOpt = None,
) -> None:
    """Queue a failed run again, with a fresh attempt count."""
    engine = open_database(settings_from(config))
    if requeue_run(engine, run_id):
        console.print(f"run {run_id} queued again")
        return
    console.print(f"[red]run {run_id} does not exist or has not failed[/red]")
    raise typer.Exit(1)
