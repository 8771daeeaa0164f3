"""Whether each routed model can be loaded (card, sha256, weights, network), for `ctnode models check` and /readyz."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


class ModelChecker:
    """Checks models once per change of their files (a load costs seconds; /readyz is polled often)."""

    def __init__(self, models: list[str]) -> None:
        self.models = list(dict.fromkeys(models))
        self._cache: dict[str, tuple[tuple[object, ...], ModelCheck]] = {}

    def check(self) -> list[ModelCheck]:
        results = []
        for model in self.models:
            signature = _signature(model)
            cached = self._cache.get(model)
            if cached is None or cached[0] != signature:
                cached = (signature, check_model(model))
                self._cache[model] = cached
            results.append(cached[1])
        return results
