"""Which model reads which series of a study, from the configured routes; every decision has a reason."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from node.config import Route
from node.events import RunMode


@dataclass(frozen=True)
class SeriesFacts:
    """What routing looks at in one stored series (from the index, no file read)."""

    series_instance_uid: str
    series_number: int | None
    modality: str | None
    body_part: str | None
    series_description: str | None
    study_description: str | None
    calling_aes: frozenset[str]

    @property
    def label(self) -> str:
        return f"series {self.series_number if self.series_number is not None else '?'} ({self.series_instance_uid})"


@dataclass(frozen=True)
class RoutedModel:
    """A model to run on a study, the series it may read, and why each was routed to it.

    ``mode``: live, or silent when any route that gave it a series is silent (nothing a silent route read is
    delivered clinically). ``shadows``: the candidate models of those routes, each to read the same series.
    """

    model: str
    series_instance_uids: tuple[str, ...]
    reasons: tuple[str, ...]
    mode: RunMode = RunMode.LIVE
    shadows: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoutingDecision:
    """The models to run (in route order) and, for every series routed to none, why not."""

    routed: tuple[RoutedModel, ...]
    unrouted: tuple[str, ...] = field(default_factory=tuple)

    def explain(self) -> list[str]:
        """Every reason, routed series first: what the run's audit records."""
        return [r for routed in self.routed for r in routed.reasons] + list(self.unrouted)


def _match(route: Route, series: SeriesFacts) -> str | None:
    """Why ``route`` applies to ``series``, or None when it does not."""
    if route.calling_aes and not series.calling_aes & set(route.calling_aes):
        return None
    why = []
    if route.body_parts or route.description_patterns:
        part = (series.body_part or "").strip().upper()
        if part and part in {p.upper() for p in route.body_parts}:
            why.append(f"body part {part}")
        else:
            for pattern in route.description_patterns:
                for name, text in (("series", series.series_description), ("study", series.study_description)):
                    if text and re.search(pattern, text, re.IGNORECASE):
                        why.append(f"{name} description matches /{pattern}/")
                        break
                if why:
                    break
        if not why:
            return None
    if route.calling_aes:
        why.append(f"sent by {', '.join(sorted(series.calling_aes & set(route.calling_aes)))}")
    return ", ".join(why) or "the route has no criteria"


PixelReader = Callable[[SeriesFacts], tuple[str | None, str]]
"""Reads a series' body part from its pixels: (HEAD, CHEST or None, the evidence in words)."""


def _first_match(routes: Sequence[Route], facts: SeriesFacts) -> tuple[Route, str] | None:
    for route in routes:
        why = _match(route, facts)
        if why is not None:
            return route, why
    return None


def route_study(routes: Sequence[Route], series: Sequence[SeriesFacts],
                pixels: PixelReader | None = None) -> RoutingDecision:
    """Give each CT series to the first route that matches it; one model run per matched model.

    A model's shadows that another route runs as its own model on this study are left out (one model reads a
    study once per settling).

    A CT series without Body Part Examined that no route matches by its tags is read by ``pixels`` (when given),
    and routed by the body part its pixels show.
    """
    by_model: dict[str, tuple[list[str], list[str]]] = {}
    modes: dict[str, set[RunMode]] = {}
    shadows: dict[str, dict[str, None]] = {}
    unrouted = []
    for facts in series:
        if (facts.modality or "").upper() != "CT":
            unrouted.append(f"{facts.label}: modality {facts.modality or 'absent'}, not CT")
            continue
        match = _first_match(routes, facts)
        if match is None and pixels is not None and not (facts.body_part or "").strip():
            part, evidence = pixels(facts)
            if part is not None:
                found = _first_match(routes, replace(facts, body_part=part))
                match = None if found is None else (found[0], f"{found[1]} from the pixels ({evidence})")
        if match is not None:
            route, why = match
            uids, reasons = by_model.setdefault(route.model, ([], []))
            uids.append(facts.series_instance_uid)
            reasons.append(f"{facts.label} -> {route.model}: {why}")
            modes.setdefault(route.model, set()).add(route.run_mode)
            shadows.setdefault(route.model, {}).update(dict.fromkeys(route.shadows))
        else:
            unrouted.append(
                f"{facts.label}: no route matches (body part {facts.body_part or 'absent'}, series description "
                f"{facts.series_description or 'absent'!r}, study description {facts.study_description or 'absent'!r})"
            )
    routed = tuple(RoutedModel(model, tuple(uids), tuple(reasons),
                               RunMode.SILENT if RunMode.SILENT in modes[model] else RunMode.LIVE,
                               tuple(name for name in shadows[model] if name not in by_model))
                   for model, (uids, reasons) in by_model.items())
    return RoutingDecision(routed, tuple(unrouted))
