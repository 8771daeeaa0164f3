"""`ctnode`: init, serve, detect, train, evaluate, synth, db, studies, runs, feedback, reports, monitor, deliveries,
notifications, store."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from node.cli.checks import config_app
from node.cli.common import (ConfigOpt, JsonOpt, VerboseOpt, console, dump_json, log_verbosely, open_database,
                             settings_from)
from node.cli.deliveries import app as deliveries_app
from node.cli.notifications import app as notifications_app
from node.cli.feedback import app as feedback_app
from node.cli.models import models_app
from node.cli.monitor import monitor
from node.cli.reports import app as reports_app
from node.cli.runs import app as runs_app
from node.cli.store import app as store_app
from node.config import AllowedPeer
from node.config_check import environment_problems
from node.db.engine import make_engine
from node.db.holdings import list_studies
from node.db.migrate import upgrade

app = typer.Typer(help="ctnode: a DICOM node that finds urgent CT findings and reports them to the PACS.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
db_app = typer.Typer(help="The audit database.", no_args_is_help=True)
studies_app = typer.Typer(help="What the node has received.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(studies_app, name="studies")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(notifications_app, name="notifications")
app.add_typer(runs_app, name="runs")
app.add_typer(feedback_app, name="feedback")
app.add_typer(reports_app, name="reports")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.add_typer(store_app, name="store")
app.command("monitor")(monitor)


@app.callback()
def main(verbose: VerboseOpt = False) -> None:
    """ctnode: a DICOM node that finds urgent CT findings and reports them to the PACS."""
    log_verbosely(verbose)  # commands other than `serve` log warnings only unless asked


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Data directory to create.")],
    keep_existing: Annotated[bool, typer.Option(help="Leave an existing ctnode.yaml untouched.")] = False,
) -> None:
    """Write a working default configuration and the data folders, and create the database."""
    directory = directory.resolve()
    config_file = directory / "ctnode.yaml"
    if config_file.exists() and keep_existing:
        console.print(f"keeping {config_file}")
    else:
        if config_file.exists():
            console.print(f"[red]{config_file} exists[/red] (use --keep-existing)")
            raise typer.Exit(1)
        directory.mkdir(parents=True, exist_ok=True)
        template = (Path(__file__).resolve().parents[1] / "ctnode.example.yaml").read_text()
        config_file.write_text(template.replace("data_dir: var/ctnode", f"data_dir: {directory}"))
        console.print(f"wrote {config_file}")
    settings = settings_from(config_file)
    for sub in (settings.storage.store_dir, settings.storage.incoming_dir, settings.storage.quarantine_dir):
        sub.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    console.print(f"database ready: {make_engine(settings.database_url).url.render_as_string(hide_password=True)}")


@app.command()
def serve(
    config: ConfigOpt = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Override storage.data_dir.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Override dicom.port.")] = None,
    ae_title: Annotated[Optional[str], typer.Option(help="Override dicom.ae_title.")] = None,
    allow: Annotated[Optional[list[str]], typer.Option(help="Allow a calling AE[@HOST] (repeatable; replaces dicom.allowed).")] = None,
    role: Annotated[Optional[list[str]], typer.Option(
        help="Run only these roles: receiver, worker, delivery (repeatable); default all of them.")] = None,
) -> None:
    """Run the node (receiver, study completion and detection workers, delivery) until SIGTERM/SIGINT."""
    from node.service import FILE_UMASK, Node, Role, run_forever

    try:
        roles = [Role(r) for r in role or ["all"]]
    except ValueError as exc:
        console.print(f"[red]--role:[/red] {exc}; choose from {', '.join(r.value for r in Role)}")
        raise typer.Exit(2) from exc

    overrides: dict[str, Any] = {}
    dicom: dict[str, Any] = {}
    if port is not None:
        dicom["port"] = port
    if ae_title is not None:
        dicom["ae_title"] = ae_title
    if allow:
        try:
            dicom["allowed"] = [AllowedPeer.parse(spec).model_dump() for spec in allow]
        except ValidationError as exc:
            console.print(f"[red]--allow:[/red] {exc}")
            raise typer.Exit(2) from exc
    if dicom:
        overrides["dicom"] = dicom
    if data_dir is not None:
        overrides["storage"] = {"data_dir": data_dir.resolve()}
    settings = settings_from(config, overrides, serving=True)
    problems = environment_problems(settings, models=bool({Role.ALL, Role.WORKER} & set(roles)))
    for line in problems:
        typer.echo(f"configuration error: {line}", err=True)
    if problems:
        raise typer.Exit(2)
    os.umask(FILE_UMASK)  # inherited by every child process
    run_forever(Node.build(settings), roles)


@app.command()
def detect(
    path: Annotated[Path, typer.Argument(help="Folder (or file) of DICOM instances of one study.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Shipped model (head, chest) or a card JSON; "
                                                 "default: the model the node's routes choose.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for overlay PNGs.")] = None,
    dicom: Annotated[bool, typer.Option("--dicom", help="Also write, under OUT/dicom, every DICOM object the node "
                                                        "would send to the PACS (SR, SC, optional GSPS/KOS).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Find focal findings in the series a radiologist would read, with the model the node would route it to."""
    from node.cli.detect import detect as run_detect  # imports torch: only for this command

    run_detect(path, model, out, dicom, config)


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Training config YAML (examples in "
                                                                   "detector/train/configs/).")],
    resume: Annotated[Optional[bool], typer.Option(
        "--resume/--no-resume", help="Continue OUT's checkpoint at its step, or start over; without either, an "
                                     "existing checkpoint stops the command.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Folder for the weights, card, evaluation/ reports, training.json and checkpoint "
                            "(default var/train/NAME-VERSION).")] = None,
) -> None:
    """Train a detector from a YAML config: pool, loop (checkpointed), threshold on the validation studies, test
    figures; writes OUT/NAME-VERSION.pt and OUT/NAME.json. Shipping is a deliberate copy of those two files into
    detector/registry/models."""
    from node.cli.train import train as run_train  # imports torch: only for this command

    run_train(config, resume, out)


@app.command()
def synth(
    background: Annotated[Path, typer.Argument(help="Folder of real CT; lesions go into the series the node reads.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the studies, one sub-folder each.")],
    target: Annotated[Literal["head", "chest"], typer.Option(help="Lesions inside the skull (head) or the lungs.")],
    studies: Annotated[int, typer.Option(min=0, help="Studies with lesions.")] = 1,
    lesions: Annotated[int, typer.Option(min=1, help="Up to this many lesions per study (1..K, drawn per study).")] = 2,
    negatives: Annotated[int, typer.Option(min=0, help="Lesion-free studies (negative controls).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the first study; the next studies count up from it.")] = 0,
) -> None:
    """Write labelled studies with synthetic lesions in a real CT background (DICOM series, SEG, JSON)."""
    from node.cli.synth import synth as run_synth  # imports highdicom: only for this command

    run_synth(background, out, target, studies, lesions, negatives, seed)


@app.command()
def evaluate(
    model: Annotated[str, typer.Option("--model", "-m", help="Shipped model (head, chest) or a card JSON.")],
    data: Annotated[Optional[list[Path]], typer.Option(
        "--data", "-d", help="A study folder, a folder of studies, or a dataset manifest (YAML; its studies of "
                             "--role). Repeatable.")] = None,
    site: Annotated[bool, typer.Option(
        "--site", help="Evaluate on the node's own studies that readers reviewed (their confirmed, edited and "
                       "missed lesions are the truth), read from the store of --config.")] = False,
    config: ConfigOpt = None,
    since: Annotated[Optional[datetime], typer.Option(help="--site: runs done from (UTC, YYYY-MM-DD).")] = None,
    until: Annotated[Optional[datetime], typer.Option(help="--site: runs done before (UTC; default now).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for report.json and froc.png.")] = None,
    role: Annotated[Optional[list[str]], typer.Option(
        help="Which studies of a manifest: train, validation or test (repeatable; default test).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for the network (default: one per core).")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap rounds for the 95% intervals.")] = 2000,
    card_dataset: Annotated[Optional[str], typer.Option(
        help="Write the figures onto the model card under this dataset name (replacing that dataset's figures).")] = None,
) -> None:
    """Lesion-level FROC of a model on labelled studies (or the site's reviewed ones), through exactly the node's
    inference path."""
    from node.cli.evaluate import SiteWindow
    from node.cli.evaluate import evaluate as run_evaluate  # imports torch: only for this command

    if bool(data) == site:
        console.print("[red]give --data (labelled studies) or --site (the node's reviewed studies), not both[/red]")
        raise typer.Exit(2)
    window = SiteWindow(settings_from(config), since, until) if site else None
    run_evaluate(model, data or [], out, role or ["test"], threads, bootstrap, card_dataset, window)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Create the database or migrate it to the newest schema."""
    settings = settings_from(config)
    upgrade(settings.database_url)
    console.print("database is at the newest schema")


@studies_app.command("list")
def studies_list(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="At most this many studies, newest first.")] = 200,
) -> None:
    """Studies received: series, instances, bytes, sources, first and last arrival."""
    settings = settings_from(config)
    studies = list_studies(open_database(settings), limit=limit)
    if as_json:
        dump_json([s.as_json() for s in studies])
        return
    table = Table("Study Instance UID", "date", "description", "series", "instances", "MB", "sources", "last received")
    for s in studies:
        table.add_row(s.study_instance_uid, s.study_date or "", s.study_description or "", str(s.series_count),
                      str(s.instances), f"{s.bytes / 1e6:.1f}", ", ".join(s.sources),
                      f"{s.last_received_at:%Y-%m-%d %H:%M:%S}" if s.last_received_at else "")
    console.print(table)


@studies_app.command("show")
def studies_show(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One study and its series."""
    settings = settings_from(config)
    found = list_studies(open_database(settings), study_uid=study_uid)
    if not found:
        console.print(f"[red]no study {study_uid}[/red]")
        raise typer.Exit(1)
    study = found[0]
    if as_json:
        dump_json(study.as_json())
        return
    console.print(f"[bold]{study.study_instance_uid}[/bold]  {study.study_date or ''} {study.study_description or ''}")
    console.print(f"{study.instances} instances, {study.bytes / 1e6:.1f} MB from {', '.join(study.sources) or '-'}")
    table = Table("#", "Series Instance UID", "modality", "description", "body part", "instances", "MB", "first", "last")
    for s in study.series:
        table.add_row(str(s.series_number or ""), s.series_instance_uid, s.modality or "", s.series_description or "",
                      s.body_part or "", str(s.instances), f"{s.bytes / 1e6:.1f}",
                      f"{s.first_received_at:%H:%M:%S}" if s.first_received_at else "",
                      f"{s.last_received_at:%H:%M:%S}" if s.last_received_at else "")
    console.print(table)
