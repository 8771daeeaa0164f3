"""What every `ctnode` command shares: the --config option, loading settings and logging, JSON output."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from node.config import Settings, load_settings
from node.config_check import problem_lines
from node.db import identifiers
from node.db.engine import make_engine
from node.db.migrate import is_current
from node.logging import configure_logging

console = Console()

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML configuration file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log at logging.level (commands log warnings only).")]
LEVEL_VARIABLE = "CTNODE_LOGGING__LEVEL"
_verbose = False  # set by the root command on every invocation (`ctnode --verbose ...`)


def log_verbosely(on: bool) -> None:
    """Whether this invocation's command logs at ``logging.level`` (the root command's --verbose)."""
    global _verbose
    _verbose = on


def settings_from(config: Path | None, overrides: dict[str, Any] | None = None, serving: bool = False) -> Settings:
    """Load settings and configure logging; a bad file or value exits with status 2 and the reason.

    Logs go to stderr. ``serving`` (`ctnode serve`) logs at ``logging.level``; any other command logs warnings and
    errors only, so that its output is its own, unless asked for more: `ctnode -v ...`, or the level set for this
    invocation in the environment (``CTNODE_LOGGING__LEVEL``).
    """
    try:
        settings = load_settings(config, overrides)
    except (FileNotFoundError, ValidationError, ValueError, yaml.YAMLError) as exc:
        for line in problem_lines(exc, config):
            typer.echo(f"configuration error: {line}", err=True)
        raise typer.Exit(2) from exc
    level = settings.logging.level
    if not (serving or _asked_to_log() or level in ("WARNING", "ERROR")):
        level = "WARNING"
    configure_logging(settings.logging.format, level)
    return settings


def _asked_to_log() -> bool:
    """`ctnode --verbose`, or a level in the environment."""
    return _verbose or any(name.upper() == LEVEL_VARIABLE for name in os.environ)


def open_database(settings: Settings) -> Engine:
    """The audit database, refusing (exit 2) one that is missing or behind the newest migration."""
    engine = make_engine(settings.database_url)
    try:
        current = is_current(engine)
    except SQLAlchemyError as exc:
        console.print(f"[red]database unreachable:[/red] {type(exc).__name__}: {exc.args[0] if exc.args else ''}")
        raise typer.Exit(2) from exc
    if not current:
        console.print("[red]the database is missing or at an older schema:[/red] run `ctnode db upgrade -c FILE`")
        raise typer.Exit(2)
    identifiers.catch_up(engine)  # what this command prints or logs may touch any study
    return engine


def dump_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def fmt_time(value: Any, precise: bool = False) -> str:
    """A timestamp for a table cell (milliseconds when ``precise``); empty when there is none."""
    if not value:
        return ""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if precise else f"{value:%Y-%m-%d %H:%M:%S}"
