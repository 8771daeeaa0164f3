"""`ctnode evaluate`: a model's lesion-level FROC on labelled studies, its report, plot and (optionally) card figures."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console

from detector.data import ManifestError
from detector.evaluate import EvaluationOptions, EvaluationReport, entries_from, evaluate_labelled, evaluate_studies
from detector.infer import InferenceOptions, card_path, load_model
from detector.io import SeriesInputError
from detector.registry import ModelCardError, save_card
from node.cli.common import open_database
from node.config import Settings

console = Console()


@dataclass(frozen=True)
class SiteWindow:
    """`--site`: the node whose reviewed studies are evaluated, and the window its runs finished in."""

    settings: Settings
    since: datetime | None
    until: datetime | None


def _utc(at: datetime | None, default: datetime) -> datetime:
    return default if at is None else at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


def evaluate(model: str, data: list[Path], out: Path | None, roles: list[str], threads: int | None, bootstrap: int,
             card_dataset: str | None, site: SiteWindow | None = None) -> None:
    """Evaluate, print the per-study and metrics tables, write the report; exit 1 when a study could not be read."""
    try:
        loaded = load_model(model)
        entries = [] if site else entries_from(data, roles, body_part=loaded.card.body_part)
    except (ModelCardError, LookupError, ManifestError, SeriesInputError, ValueError) as exc:
        console.print(f"[red]cannot evaluate:[/red] {exc}")
        raise typer.Exit(2) from exc
    options = EvaluationOptions(inference=InferenceOptions(threads=threads), bootstrap_rounds=bootstrap)
    report: EvaluationReport
    if site is None:
        report = evaluate_studies(loaded, entries, options=options, console=console)
    else:
        from node.monitor.site_cases import site_studies

        now = datetime.now(timezone.utc)
        studies = site_studies(open_database(site.settings), site.settings.storage.store_dir, loaded.card.body_part,
                               _utc(site.since, datetime(1970, 1, 1, tzinfo=timezone.utc)), _utc(site.until, now))
        console.print(f"{len(studies)} reviewed {loaded.card.body_part.lower()} stud{'y' if len(studies) == 1 else 'ies'}"
                      " of this node")
        report = evaluate_labelled(loaded, studies, options=options, console=console)
    console.print(report.study_table())
    if report.froc.studies:
        console.print(report.metrics_table())
    for flagged in report.flagged:
        console.print(f"[yellow]warning:[/yellow] {flagged.study.id} was used in training "
                      f"({flagged.trained_on.use if flagged.trained_on else ''}): its figures are not held out")
    if out is not None:
        for path in report.write(out):
            console.print(f"wrote {path}")
    if card_dataset and report.froc.studies:
        path = card_path(model)
        kept = tuple(e for e in loaded.card.evaluation if e.dataset != card_dataset)
        save_card(replace(loaded.card, evaluation=kept + report.figures(card_dataset)), path)
        console.print(f"wrote the figures onto {path}")
    failed = [r for r in report.results if r.error]
    for r in failed:
        console.print(f"[red]{r.study.id}:[/red] {r.error}")
    if failed or not report.froc.studies:
        raise typer.Exit(1)
