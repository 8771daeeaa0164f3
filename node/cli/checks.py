"""`ctnode config check` and `ctnode models check`: what would stop the node, found before it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from node.cli.options import ConfigOpt, settings_from
from node.config_check import load_checked

config_app = typer.Typer(help="The configuration file.", no_args_is_help=True)
models_app = typer.Typer(help="The detection models the node routes to.", no_args_is_help=True)


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="YAML configuration file.")]) -> None:
    """Load FILE as `ctnode serve` would and check it against this machine; one line per problem, exit 2 if any."""
    _, problems = load_checked(file)
    for line in problems:
        typer.echo(f"configuration error: {line}", err=True)
    if problems:
        raise typer.Exit(2)
    typer.echo(f"{file}: ok")


@models_app.command("check")
def models_check(config: ConfigOpt = None) -> None:
    """Load every routed model (card, weights sha256, network) as a worker would; exit 1 if one cannot be loaded."""
    from node.pipeline.models import check_model

    settings = settings_from(config)
    results = [check_model(model) for model in dict.fromkeys(route.model for route in settings.pipeline.routes)]
    for result in results:
        typer.echo(f"{result.model}: {'ok' if result.ok else 'CANNOT BE LOADED'}: {result.detail}")
    if not all(result.ok for result in results):
        raise typer.Exit(1)
