"""`ctnode synth BACKGROUND`: labelled synthetic-lesion studies on a real CT background, for evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from detector.io import SeriesInputError
from detector.synth import Target
from detector.synth.sets import study_plan, write_set
from detector.synth.studies import JSON_NAME, LABELS, SynthesisError
from node.cli.common import console


def summary_table(folders: list[Path]) -> Table:
    """One row per study: folder, lesion count and diameters, Study Instance UID (from its labels/lesions.json)."""
    table = Table(title=f"{len(folders)} synthetic stud{'y' if len(folders) == 1 else 'ies'}")
    for column in ("study", "lesions", "diameters (mm)", "Study Instance UID"):
        table.add_column(column, justify="right" if column == "lesions" else "left")
    for folder in folders:
        summary = json.loads((folder / LABELS / JSON_NAME).read_text())
        diameters = ", ".join(f"{lesion['diameter_mm']:.1f}" for lesion in summary["lesions"]) or "-"
        table.add_row(folder.name, str(len(summary["lesions"])), diameters, summary["study_instance_uid"])
    return table


def synth(background: Path, out: Path, target: Target, studies: int, lesions: int, negatives: int, seed: int) -> None:
    """Write the planned studies as ``out/<background name>-<seed>``, with a progress bar and a summary."""
    total = len(study_plan(studies, lesions, negatives, seed))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"{background.resolve().name}", total=total)
            folders = write_set(background, out, target, studies, lesions, negatives, seed,
                                each=lambda folder: progress.advance(task))
    except (SeriesInputError, SynthesisError, OSError) as exc:
        console.print(f"[red]cannot synthesise:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(summary_table(folders))
