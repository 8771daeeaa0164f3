"""Whether each model the routes run can be loaded (card, sha256, weights, network), for `ctnode models check` and
/readyz: each route's live model as it is now (a promoted card, as route_model holds it, or the configured one) and
its shadows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from node.config import Route


@dataclass(frozen=True)
class ModelCheck:
    """One model: loadable or not, and in one line what it is or what is wrong."""

    model: str
    ok: bool
    detail: str


def check_model(model: str) -> ModelCheck:
    """Load ``model`` as a worker would; any reason it cannot be used becomes the detail."""
    from detector.infer import load_model
    from detector.registry import ModelCardError

    try:
        loaded = load_model(model)
    except (ModelCardError, LookupError, OSError) as exc:
        return ModelCheck(model, False, str(exc))
    card = loaded.card
    return ModelCheck(model, True, f"{card.name} {card.version}, weights sha256 {card.weights_sha256[:12]}...")


def _signature(model: str) -> tuple[object, ...]:
    """What the check's answer depends on: the card file and the weights files beside it, as they are now."""
    from detector.infer.models import card_path

    try:
        card = card_path(model)
    except LookupError:
        return (model, None)
    stats = [(p.name, s.st_size, s.st_mtime_ns) for p in sorted(card.parent.iterdir())
             if p.suffix in (".json", ".pt") and (s := _stat(p)) is not None]
    return (model, str(card), tuple(stats))


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


@dataclass(frozen=True)
class Routed:
    """The models routes run, each once: the live (or silent) model of each route, and the shadows not also live."""

    live: tuple[str, ...]
    shadows: tuple[str, ...]

    @classmethod
    def of(cls, routes: Sequence[Route]) -> Routed:
        live = tuple(dict.fromkeys(route.model for route in routes))
        shadows = tuple(m for m in dict.fromkeys(s for route in routes for s in route.shadows) if m not in live)
        return cls(live, shadows)


def routes_now(engine: Engine, routes: Sequence[Route]) -> list[Route]:
    """The routes as they run now (node.pipeline.assignment.current_routes); the configured ones where the database
    has no route_model table yet (no promotion can have been made). SQLAlchemyError when it cannot be read."""
    from node.pipeline.assignment import current_routes

    with engine.connect() as conn:
        if not inspect(conn).has_table("route_model"):
            return list(routes)
    return current_routes(engine, routes)


class ModelChecker:
    """Checks models once per change of their files (a load costs seconds; /readyz is polled often).

    Given ``engine`` and ``routes``, the models are those the routes run now, read at every check (a promotion or
    rollback changes them without a restart); while the database cannot be read, the last ones read (at first the
    configured ones). Otherwise ``models``, as live models.
    """

    def __init__(self, models: Sequence[str] = (), engine: Engine | None = None,
                 routes: Sequence[Route] | None = None) -> None:
        self.engine, self.routes = engine, list(routes or [])
        self._last = Routed.of(self.routes) if self.routes else Routed(tuple(dict.fromkeys(models)), ())
        self._cache: dict[str, tuple[tuple[object, ...], ModelCheck]] = {}

    def routed(self) -> Routed:
        """The models to check now."""
        if self.engine is not None and self.routes:
            try:
                self._last = Routed.of(routes_now(self.engine, self.routes))
            except SQLAlchemyError:
                pass  # the database check says why; the models last known to run are checked meanwhile
        return self._last

    def check(self, models: Sequence[str]) -> list[ModelCheck]:
        results = []
        for model in models:
            signature = _signature(model)
            cached = self._cache.get(model)
            if cached is None or cached[0] != signature:
                cached = (signature, check_model(model))
                self._cache[model] = cached
            results.append(cached[1])
        return results
