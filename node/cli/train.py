"""`ctnode train --config FILE`: train a detector from a YAML config (a dataset manifest, or this node's own reviewed
studies under ``site:``); weights, model card and reports to a folder."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from detector.evaluate import LabelError
from detector.io import SeriesInputError
from detector.registry import ModelCardError
from detector.train.checkpoint import CheckpointError
from detector.train.config import SiteSource, TrainConfig, TrainConfigError, load_train_config
from detector.train.run import DEFAULT_OUT, run_training

console = Console(stderr=True)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _utc(at: datetime | None, default: datetime) -> datetime:
    return default if at is None else at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


def live_model(settings: object, body_part: str) -> str:
    """The model of the first live route whose card is for ``body_part``."""
    from node.config import Settings
    from node.monitor.figures import card_facts

    assert isinstance(settings, Settings)
    for route in settings.pipeline.routes:
        facts = card_facts(route.model)
        if route.mode == "live" and facts is not None and facts.body_part.upper() == body_part.upper():
            return route.model
    raise TrainConfigError(f"site: the node has no live route to a {body_part} model; give site.parent")


def train_on_site(config: TrainConfig, out: Path | None, resume: bool | None) -> Path:
    """Read this node's reviewed studies (the database and store ``site`` names), hand them to
    :func:`detector.train.site.fine_tune_on_site`, and print how the card enters as a shadow candidate."""
    from detector.infer import card_path
    from detector.train.site import fine_tune_on_site
    from node.config import Settings, load_settings
    from node.db.engine import make_engine
    from node.monitor.site_cases import site_cases

    site = config.site
    assert isinstance(site, SiteSource)
    if site.config is not None:
        settings = load_settings(site.config)
        url, store_dir, name = settings.database_url, settings.storage.store_dir, str(site.config)
    else:
        assert site.database_url is not None and site.store_dir is not None
        settings = Settings(database={"url": site.database_url})
        url, store_dir, name = site.database_url, site.store_dir, "database"
    body_part = (site.body_part or config.spec.body_part).upper()
    parent = site.parent or live_model(settings, body_part)
    engine = make_engine(url)
    started = time.monotonic()
    try:
        cases = site_cases(engine, store_dir, body_part, _utc(site.since, EPOCH),
                           _utc(site.until, datetime.now(timezone.utc)))
    finally:
        engine.dispose()
    console.print(f"{len(cases)} reviewed {body_part.lower()} studies with lesion-level feedback; fine-tuning "
                  f"{parent}")
    out = Path(out) if out is not None else DEFAULT_OUT / f"{config.name}-{config.version}"
    card = fine_tune_on_site(config, cases, card_path(parent), out, name, resume)
    console.print(f"site fine-tuning took {time.monotonic() - started:.0f} s")
    print(f"shadow candidate: add to the route of {parent}: shadows: [{card.resolve()}]")
    return card


def train(config: Path, resume: bool | None, out: Path | None) -> None:
    """Run :func:`detector.train.run.run_training` (or :func:`train_on_site`); a config, data or checkpoint problem
    is one line, no traceback."""
    try:
        loaded = load_train_config(config)
        card = train_on_site(loaded, out, resume) if loaded.site is not None else run_training(config, out, resume)
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
