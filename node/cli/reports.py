"""`ctnode reports`: the radiology reports the node received and the study labels read from them (list, show)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Optional

import typer
from rich.table import Table

from node.cli.common import ConfigOpt, JsonOpt, console, dump_json, fmt_time, open_database, settings_from
from node.labels.radiology_reports import get_report, list_reports

app = typer.Typer(help="Radiology reports (HL7 ORU from the RIS, text SRs from the PACS) and their study labels.",
                  no_args_is_help=True)


@app.command("list")
def reports_list(
    config: ConfigOpt = None,
    study: Annotated[Optional[str], typer.Option(help="Only reports of this Study Instance UID.")] = None,
    unmatched: Annotated[bool, typer.Option(help="Only reports that matched no study (refused).")] = False,
    limit: Annotated[int, typer.Option(help="At most this many reports, newest first.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Reports: study, source, control ID, result status, labels, and whether each is its study's current one."""
    rows = list_reports(open_database(settings_from(config)), study_uid=study, unmatched=unmatched, limit=limit)
    if as_json:
        dump_json([asdict(r) for r in rows])
        return
    table = Table("id", "study", "source", "control id / SOP instance", "status", "labels", "received", "current")
    for r in rows:
        labels = ", ".join(f"{ft}:{value}" for ft, value in sorted(r.labels.items())) or "-"
        table.add_row(str(r.id), r.study_instance_uid or "(no study)", r.source,
                      r.control_id or r.sop_instance_uid or "", r.result_status or "", labels,
                      fmt_time(r.received_at), "yes" if r.current else "no")
    console.print(table)


@app.command("show")
def reports_show(
    report_id: Annotated[int, typer.Argument(help="Report id (from `ctnode reports list`).")],
    config: ConfigOpt = None,
    text: Annotated[bool, typer.Option("--text", help="Print the whole report text too.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """One report: where it came from, and per finding type the label, the sentence it came from and the rule."""
    found = get_report(open_database(settings_from(config)), report_id)
    if found is None:
        console.print(f"[red]no report {report_id}[/red]")
        raise typer.Exit(1)
    report, labels = found
    record = {"id": report.id, "study_instance_uid": report.study_instance_uid, "source": report.source,
              "control_id": report.control_id, "sop_instance_uid": report.sop_instance_uid,
              "result_status": report.result_status, "received_at": report.received_at, "current": report.current,
              "path": report.path,
              "labels": [{"finding_type": lb.finding_type, "value": lb.value, "span": [lb.span_start, lb.span_end],
                          "evidence": lb.evidence, "rule": lb.rule} for lb in labels]}
    if text:
        record["text"] = report.text
    if as_json:
        dump_json(record)
        return
    console.print(f"[bold]report {report.id}[/bold] of study {report.study_instance_uid or '(no study: refused)'}, "
                  f"{'current' if report.current else 'not current'}; {report.source} "
                  f"{report.control_id or report.sop_instance_uid or ''}, status {report.result_status or '-'}, "
                  f"received {fmt_time(report.received_at)}; kept at {report.path or '-'}")
    table = Table("finding type", "label", "span", "sentence", "rule")
    for item in record["labels"]:
        table.add_row(item["finding_type"], item["value"], f"{item['span'][0]}-{item['span'][1]}", item["evidence"],
                      item["rule"])
    console.print(table)
    if text:
        console.print(report.text, markup=False, highlight=False)
