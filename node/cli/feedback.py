"""`ctnode feedback`: what the site's readers decided about our findings (list, show)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from node.cli.common import ConfigOpt, JsonOpt, console, dump_json, fmt_time, open_database, settings_from
from node.feedback import feedback_record, list_feedback

app = typer.Typer(help="Readers' reviews of our runs, from the SRs their viewers saved in the PACS.",
                  no_args_is_help=True)


@app.command("list")
def feedback_list(
    config: ConfigOpt = None,
    run: Annotated[Optional[int], typer.Option(help="Only reviews of this run.")] = None,
    study: Annotated[Optional[str], typer.Option(help="Only reviews of this Study Instance UID.")] = None,
    all_versions: Annotated[bool, typer.Option("--all", help="Include reviews a later one superseded.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many reviews, newest first.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Reviews: run, reader, confirmed / rejected / edited findings and the lesions the run missed."""
    rows = list_feedback(open_database(settings_from(config)), run_id=run, study_instance_uid=study,
                         include_superseded=all_versions, limit=limit)
    if as_json:
        dump_json(rows)
        return
    table = Table("id", "run", "study", "reader", "confirmed", "rejected", "edited", "missed", "received", "current")
    for r in rows:
        table.add_row(str(r["id"]), str(r["run_id"]), r["study_instance_uid"], r["reader"] or "-",
                      str(r["confirmed"]), str(r["rejected"]), str(r["edited"]), str(r["missed"]),
                      fmt_time(r["received_at"]), "yes" if r["current"] else f"superseded by {r['superseded_by_id']}")
    console.print(table)


@app.command("show")
def feedback_show(
    feedback_id: Annotated[int, typer.Argument(help="Feedback id (from `ctnode feedback list`).")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One review: its SR, reader, and the verdict on each finding, with the reader's geometry where they drew."""
    record = feedback_record(open_database(settings_from(config)), feedback_id)
    if record is None:
        console.print(f"[red]no feedback {feedback_id}[/red]")
        raise typer.Exit(1)
    if as_json:
        dump_json(record)
        return
    state = "current" if record["current"] else f"superseded by {record['superseded_by_id']}"
    console.print(f"[bold]feedback {record['id']}[/bold] on run {record['run_id']} ({record['model']} "
                  f"{record['model_version'] or ''}) of study {record['study_instance_uid']}, {state}")
    console.print(f"reader {record['reader'] or '-'} {record['reader_id'] or ''}; SR {record['sop_instance_uid']}, "
                  f"written {fmt_time(record['content_at'])}, received {fmt_time(record['received_at'])}")
    table = Table("verdict", "finding", "our label", "score", "matched by", "reader's label", "centre LPS (mm)",
                  "diameter (mm)", "regions")
    for item in record["items"]:
        table.add_row(item["verdict"], str(item["finding"] or ""), item["finding_label"] or "",
                      f"{item['finding_score']:.3f}" if item["finding_score"] is not None else "",
                      item["matched_by"] or "", item["label"] or "",
                      ", ".join(f"{v:.1f}" for v in item["centre_mm"]) if item["centre_mm"] else "",
                      f"{item['diameter_mm']:.1f}" if item["diameter_mm"] is not None else "",
                      str(len(item["regions"])))
    console.print(table)
