"""`ctnode config check` and `ctnode models check`: what would stop the node, found before it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from node.cli.common import ConfigOpt, settings_from
from node.config import Route, Settings
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


def _routes_now(settings: Settings) -> list[Route]:
    """The routes as the node runs them now (promotions and rollbacks in the database applied); the configured ones
    where there is no database yet, or (with a warning) where it cannot be read."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from node.db.engine import make_engine
    from node.pipeline.model_check import routes_now

    routes = settings.pipeline.routes
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).is_file()):
        return list(routes)  # no database yet (`ctnode init` or `serve` makes it): no promotion can exist
    engine = make_engine(settings.database_url)
    try:
        return routes_now(engine, routes)
    except SQLAlchemyError as exc:
        typer.echo(f"warning: the database cannot be read ({type(exc).__name__}): the configured models are "
                   "checked, a promoted one is not", err=True)
        return list(routes)
    finally:
        engine.dispose()


@models_app.command("check")
def models_check(config: ConfigOpt = None) -> None:
    """Load every model the routes run now as a worker would (card, weights sha256, network): each route's live
    model (a promoted one, from the database, or the configured one) and its shadows; exit 1 if one cannot be
    loaded."""
    from node.pipeline.model_check import Routed, check_model

    settings = settings_from(config)
    routed = Routed.of(_routes_now(settings))
    results = [(check_model(model), model in routed.shadows) for model in (*routed.live, *routed.shadows)]
    for result, shadow in results:
        typer.echo(f"{result.model}{' (shadow)' if shadow else ''}: {'ok' if result.ok else 'CANNOT BE LOADED'}: "
                   f"{result.detail}")
    if not all(result.ok for result, _ in results):
        raise typer.Exit(1)
