"""Which model each route runs now: the configured routes, as the promotions and rollbacks in route_model changed them.

A route with no change runs its configured model. Each promotion (on the evidence of a comparison) makes a
candidate the live model; each rollback undoes the last promotion not yet undone, so the promotions left say
which model is live. The live model is never also a shadow of its route; a model that was live and is neither
live nor a configured shadow now is retired (listed, never run). The stabilizer reads the assignment at every
settling and the worker at every claim (one small query), so a change takes effect for the next study without a
restart. A run keeps the mode it was queued with: a study settled before a promotion is delivered as queued.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, func, insert, select
from sqlalchemy.exc import IntegrityError

from node.config import PromotionConfig, Route
from node.db import audit
from node.db.schema import ModelComparison, RouteModel, utcnow
from node.events import AuditKind, ModelRole, RouteChange


@dataclass(frozen=True)
class Change:
    """One route_model row."""

    id: int
    route: str
    seq: int
    change: RouteChange
    model: str
    replaced: str
    comparison_id: int | None
    undoes_id: int | None
    by: str
    at: datetime
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "route": self.route, "seq": self.seq, "change": str(self.change), "model": self.model,
                "replaced": self.replaced, "comparison_id": self.comparison_id, "undoes_id": self.undoes_id,
                "by": self.by, "at": self.at.isoformat(), "reason": self.reason}


@dataclass(frozen=True)
class RouteState:
    """A route as it runs now: its configured form, the route with its current live model and shadows, the
    promotions not undone (newest last), the retired models and every change (oldest first)."""

    configured: Route
    current: Route
    standing: tuple[Change, ...]
    retired: tuple[str, ...]
    history: tuple[Change, ...]

    @property
    def name(self) -> str:
        return self.configured.key

    @property
    def last_change_at(self) -> datetime | None:
        return self.history[-1].at if self.history else None

    def role(self, model: str) -> ModelRole | None:
        if model == self.current.model:
            return ModelRole.LIVE
        if model in self.current.shadows:
            return ModelRole.SHADOW
        return ModelRole.RETIRED if model in self.retired else None


def load_changes(conn: Connection, route: str | None = None) -> list[Change]:
    """Every change (of ``route``, when given), oldest first."""
    query = select(RouteModel).order_by(RouteModel.route, RouteModel.seq)
    if route is not None:
        query = query.where(RouteModel.route == route)
    return [Change(r.id, r.route, r.seq, RouteChange(r.change), r.model, r.replaced, r.comparison_id, r.undoes_id,
                   r.by, r.at, r.reason) for r in conn.execute(query)]


def state_of(route: Route, changes: Sequence[Change]) -> RouteState:
    """The route as ``changes`` (its own, oldest first) leave it."""
    standing: list[Change] = []
    ever = [route.model]
    for change in changes:
        if change.change is RouteChange.PROMOTED:
            standing.append(change)
        elif standing:
            standing.pop()
        ever += [change.replaced, change.model]
    live = standing[-1].model if standing else route.model
    current = route.model_copy(update={"model": live, "shadows": [s for s in route.shadows if s != live]})
    retired = tuple(m for m in dict.fromkeys(ever) if m != live and m not in current.shadows)
    return RouteState(route, current, tuple(standing), retired, tuple(changes))


def route_states(engine: Engine, routes: Sequence[Route]) -> list[RouteState]:
    """Every configured route as it runs now."""
    with engine.connect() as conn:
        changes = load_changes(conn)
    return [state_of(route, [c for c in changes if c.route == route.key]) for route in routes]


def current_routes(engine: Engine, routes: Sequence[Route]) -> list[Route]:
    """The configured routes with the live model (and shadows) each runs now; the configured ones while no route
    has changed."""
    with engine.connect() as conn:
        changed = conn.execute(select(RouteModel.id).limit(1)).first() is not None
    if not changed:
        return list(routes)
    return [state.current for state in route_states(engine, routes)]


class ChangeRefused(Exception):
    """A promotion or rollback that must not happen; the message is the one-line reason."""


def _state(engine: Engine, routes: Sequence[Route], name: str) -> RouteState:
    for state in route_states(engine, routes):
        if state.name == name:
            return state
    raise ChangeRefused(f"no route {name!r}; the routes are {', '.join(r.key for r in routes)}")


def _card_sha(model: str) -> str:
    """The weights sha256 the model's card names now (ChangeRefused when the card is gone or unreadable)."""
    from detector.infer.models import card_path
    from detector.registry import ModelCardError, load_card

    try:
        return load_card(card_path(model)).weights_sha256
    except (LookupError, ModelCardError, OSError) as exc:
        raise ChangeRefused(f"model {model} cannot be read: {exc}") from exc


def default_by() -> str:
    """Who makes a change when --by is not given: the operating-system user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def promote(engine: Engine, routes: Sequence[Route], rule: PromotionConfig, route_name: str, candidate: str,
            by: str, reason: str = "") -> Change:
    """Make ``candidate`` the live model of the route, on the newest comparison of exactly (its live model now,
    ``candidate``) made after the route's last change, if that comparison meets ``rule``; audited with the
    evidence. ChangeRefused (one line) otherwise."""
    from node.monitor.compare import judge

    state = _state(engine, routes, route_name)
    live = state.current.model
    if candidate == live:
        raise ChangeRefused(f"{candidate} is already the live model of route {route_name}")
    with engine.connect() as conn:
        row = conn.execute(select(ModelComparison).where(
            ModelComparison.route == route_name, ModelComparison.live_model == live,
            ModelComparison.candidate_model == candidate).order_by(ModelComparison.id.desc()).limit(1)).first()
    if row is None:
        raise ChangeRefused(f"no comparison of {candidate} with route {route_name}'s live model {live}: run "
                            f"`ctnode models compare {live} {candidate} --route {route_name}` first")
    changed = state.last_change_at
    if changed is not None and row.created_at <= changed:
        raise ChangeRefused(f"comparison {row.id} ({row.created_at:%Y-%m-%d %H:%M:%S}) is older than route "
                            f"{route_name}'s last change ({changed:%Y-%m-%d %H:%M:%S}): compare again")
    for model, recorded in ((live, row.live_weights_sha256), (candidate, row.candidate_weights_sha256)):
        if _card_sha(model) != recorded:
            raise ChangeRefused(f"comparison {row.id} measured other weights of {model} (sha256 {recorded[:12]}...) "
                                "than its card names now: compare again")
    ok, why = judge(row.figures, rule)
    if not ok:
        raise ChangeRefused(f"comparison {row.id} does not meet the promotion rule: {why}")
    evidence = {"comparison_id": row.id, "rule": rule.model_dump(), "judged": why,
                "live": {"model": live, "name": row.live_name, "version": row.live_version,
                         "weights_sha256": row.live_weights_sha256},
                "candidate": {"model": candidate, "name": row.candidate_name, "version": row.candidate_version,
                              "weights_sha256": row.candidate_weights_sha256}}
    return _record(engine, state, RouteChange.PROMOTED, candidate, live, by, reason, AuditKind.MODEL_PROMOTED,
                   evidence, comparison_id=row.id)


def rollback(engine: Engine, routes: Sequence[Route], route_name: str, by: str, reason: str = "") -> Change:
    """Undo the route's last promotion not yet undone: its previous live model runs again; audited.
    ChangeRefused when the route runs its configured model."""
    state = _state(engine, routes, route_name)
    if not state.standing:
        raise ChangeRefused(f"route {route_name} runs its configured model {state.configured.model}: "
                            "no promotion to roll back")
    undone = state.standing[-1]
    evidence = {"undoes": undone.as_dict(), "comparison_id": undone.comparison_id}
    return _record(engine, state, RouteChange.ROLLED_BACK, undone.replaced, undone.model, by, reason,
                   AuditKind.MODEL_ROLLED_BACK, evidence, undoes_id=undone.id)


def _record(engine: Engine, state: RouteState, change: RouteChange, model: str, replaced: str, by: str,
            reason: str, kind: AuditKind, evidence: dict[str, object], comparison_id: int | None = None,
            undoes_id: int | None = None) -> Change:
    """Append the change as the route's next one (a change made meanwhile by someone else refuses it) and audit it."""
    at = utcnow()
    try:
        with engine.begin() as conn:
            seq = (conn.execute(select(func.max(RouteModel.seq)).where(RouteModel.route == state.name)).scalar()
                   or 0) + 1
            if seq != len(state.history) + 1:
                raise ChangeRefused(f"route {state.name} changed meanwhile: look again (`ctnode models list`)")
            row_id = conn.execute(insert(RouteModel).returning(RouteModel.id).values(
                route=state.name, seq=seq, change=str(change), model=model, replaced=replaced,
                comparison_id=comparison_id, undoes_id=undoes_id, by=by, at=at, reason=reason)).scalar_one()
            audit.record(conn, kind, detail={"route": state.name, "route_model_id": row_id, "model": model,
                                             "replaced": replaced, "by": by, "reason": reason, **evidence})
    except IntegrityError as exc:  # another change took this sequence number first
        raise ChangeRefused(f"route {state.name} changed meanwhile: look again (`ctnode models list`)") from exc
    return Change(row_id, state.name, seq, change, model, replaced, comparison_id, undoes_id, by, at, reason)
