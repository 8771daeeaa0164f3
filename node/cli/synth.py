"""`ctnode synth BACKGROUND`: labelled synthetic-lesion studies on a real CT background, for evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from detector.io import SeriesInputError
from detector.synth import Target
from detector.synth.studies import SynthesisError, SyntheticStudy, read_background, write_synthetic_study
from node.cli.options import console


def study_plan(studies: int, lesions: int, negatives: int, seed: int) -> list[tuple[int, int]]:
    """(seed, lesion count) per study: positives with 1..``lesions`` lesions drawn from their seed, then negatives."""
    positives = [(seed + n, int(np.random.default_rng([seed + n, lesions]).integers(1, lesions + 1)))
                 for n in range(studies)]
    return positives + [(seed + studies + n, 0) for n in range(negatives)]


def summary_table(written: list[SyntheticStudy]) -> Table:
    """One row per study: folder, lesion count and diameters, Study Instance UID."""
    table = Table(title=f"{len(written)} synthetic stud{'y' if len(written) == 1 else 'ies'}")
    for column in ("study", "lesions", "diameters (mm)", "Study Instance UID"):
        table.add_column(column, justify="right" if column == "lesions" else "left")
    for study in written:
        diameters = ", ".join(f"{lesion.diameter_mm:.1f}" for lesion in study.lesions) or "-"
        table.add_row(study.folder.name, str(len(study.lesions)), diameters, study.study_instance_uid)
    return table


def synth(background: Path, out: Path, target: Target, studies: int, lesions: int, negatives: int, seed: int) -> None:
    """Write the planned studies as ``out/<background name>-<seed>``, with a progress bar and a summary."""
    plan = study_plan(studies, lesions, negatives, seed)
    written: list[SyntheticStudy] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"reading {background}", total=len(plan))
            source = read_background(background)
            name = background.resolve().name
            for study_seed, count in plan:
                progress.update(task, description=f"{name}-{study_seed}")
                written.append(write_synthetic_study(source, out / f"{name}-{study_seed}", target, count, study_seed))
                progress.advance(task)
    except (SeriesInputError, SynthesisError, OSError) as exc:
        console.print(f"[red]cannot synthesise:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(summary_table(written))
