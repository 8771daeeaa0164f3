"""`ctnode train --config FILE`: train a detector from a YAML config; weights, model card and reports to a folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from detector.evaluate import LabelError
from detector.io import SeriesInputError
from detector.registry import ModelCardError
from detector.train.checkpoint import CheckpointError
from detector.train.config import TrainConfigError
from detector.train.run import run_training

console = Console(stderr=True)


def train(config: Path, resume: bool | None, out: Path | None) -> None:
    """Run :func:`detector.train.run.run_training`; a config, data or checkpoint problem is one line, no traceback."""
    try:
        card = run_training(config, out, resume)
    except TrainConfigError as exc:
        console.print(f"[red]configuration error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    except (CheckpointError, SeriesInputError, LabelError, ModelCardError) as exc:
        console.print(f"[red]cannot train:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt as exc:
        console.print("interrupted: run again with --resume to continue from the last checkpoint")
        raise typer.Exit(130) from exc
    console.print(f"wrote {card} and its weights")
