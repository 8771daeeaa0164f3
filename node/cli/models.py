"""`ctnode models compare/promote/rollback/list`: a candidate measured against a route's live model on the studies both
read, promoted on that evidence and the site's rule, rolled back, and every route's models with their figures."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from sqlalchemy import Engine, select

from node.cli.checks import models_app
from node.cli.common import ConfigOpt, JsonOpt, console, dump_json, open_database, settings_from
from node.config import Settings
from node.db.schema import ModelComparison, Run
from node.monitor.periods import Period
from node.pipeline.assignment import ChangeRefused, RouteState, default_by, promote, rollback, route_states

DateOpt = Annotated[Optional[datetime], typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"],
                                                     help="Runs done from (UTC); default: every run.")]
RouteOpt = Annotated[Optional[str], typer.Option("--route", "-r", help="The route's name (pipeline.routes.N.name).")]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

__all__ = ["models_app"]


def _utc(at: datetime | None) -> datetime:
    if at is None:
        return EPOCH
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


def _as_routed(engine: Engine, model: str) -> str:
    """``model`` as runs name it: as given, or the one routed model whose runs carry that card name."""
    with engine.connect() as conn:
        if conn.execute(select(Run.id).where(Run.model == model).limit(1)).first() is not None:
            return model
        named = conn.execute(select(Run.model).where(Run.model_name == model).distinct()).scalars().all()
    return named[0] if len(named) == 1 else model


def _route_for(states: list[RouteState], route: str | None, live: str, candidate: str) -> RouteState:
    if route is not None:
        for state in states:
            if state.name == route:
                return state
        console.print(f"[red]no route {route!r}[/red]; the routes are {', '.join(s.name for s in states)}")
        raise typer.Exit(2)
    for found in ([s for s in states if s.current.model == live and candidate in s.current.shadows],
                  [s for s in states if s.current.model == live]):
        if len(found) == 1:
            return found[0]
    console.print(f"[red]no one route runs {live} live[/red]: name it with --route")
    raise typer.Exit(2)


@models_app.command("compare")
def models_compare(
    live: Annotated[str, typer.Argument(help="The live model, as the routes name it (shipped name or card path).")],
    candidate: Annotated[str, typer.Argument(help="The candidate (usually one of the route's shadows).")],
    route: RouteOpt = None,
    since: DateOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for comparison.json and froc.png "
                                                "(default DATA_DIR/comparisons/comparison-ID).")] = None,
    bootstrap: Annotated[int, typer.Option(min=100, help="Paired bootstrap rounds for the 95% intervals.")] = 2000,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """On the studies both models read (the same series): agreement of their findings in 3D and, where readers
    reviewed or reports labelled them, the paired differences (candidate - live) in lesion CPM, sensitivity and
    FP/scan at each card's operating point and study-level sensitivity/specificity, with paired bootstrap 95% CIs
    over studies; time per study. Kept in the database (promotion rests on it) with its report."""
    from node.monitor.compare import NothingToCompare, compare_models, comparison_table, keep

    settings = settings_from(config)
    engine = open_database(settings)
    live, candidate = _as_routed(engine, live), _as_routed(engine, candidate)
    state = _route_for(route_states(engine, settings.pipeline.routes), route, live, candidate)
    try:
        figures = compare_models(engine, state.name, live, candidate, _utc(since), datetime.now(timezone.utc),
                                 rounds=bootstrap)
    except NothingToCompare as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    comparison_id, written = keep(engine, figures, out, settings.storage.data_dir)
    if as_json:
        dump_json({"id": comparison_id, "report": [str(p) for p in written], **figures})
        return
    console.print(comparison_table(figures, comparison_id))
    console.print(f"comparison {comparison_id} kept; report: {', '.join(str(p) for p in written)}")


@models_app.command("promote")
def models_promote(
    candidate: Annotated[str, typer.Argument(help="The model to make live, as the routes name it.")],
    route: Annotated[str, typer.Option("--route", "-r", help="The route's name.")],
    reason: Annotated[str, typer.Option(help="Why, for the audit.")] = "",
    by: Annotated[Optional[str], typer.Option(help="Who decides (default: the OS user).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Make CANDIDATE the route's live model from its next study on (no restart), if the newest comparison of
    exactly (the live model, CANDIDATE), made after the route's last change, meets the configured `promotion`
    rule; the replaced model is retired. Audited with the evidence; refused with the reason (exit 1)."""
    settings = settings_from(config)
    engine = open_database(settings)
    try:
        change = promote(engine, settings.pipeline.routes, settings.promotion, route, _as_routed(engine, candidate),
                         by or default_by(), reason)
    except ChangeRefused as exc:
        typer.echo(f"promotion refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"route {route}: {change.model} is live (was {change.replaced}; comparison {change.comparison_id}, "
               f"by {change.by})")


@models_app.command("rollback")
def models_rollback(
    route: Annotated[str, typer.Option("--route", "-r", help="The route's name.")],
    reason: Annotated[str, typer.Option(help="Why, for the audit.")] = "",
    by: Annotated[Optional[str], typer.Option(help="Who decides (default: the OS user).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Undo the route's last promotion: its previous live model runs again from the next study on. Audited."""
    settings = settings_from(config)
    engine = open_database(settings)
    try:
        change = rollback(engine, settings.pipeline.routes, route, by or default_by(), reason)
    except ChangeRefused as exc:
        typer.echo(f"rollback refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"route {route}: {change.model} is live again (rolled back {change.replaced}, by {change.by})")


def model_figures(engine: Engine, since: datetime, until: datetime, rounds: int = 200) -> dict[str, dict[str, Any]]:
    """Per model (as routed): the monitor's figures of its newest identity's runs in the window."""
    from node.monitor.done_runs import load_runs
    from node.monitor.figures import figures_of

    by_model: dict[str, list[Any]] = defaultdict(list)
    for run in load_runs(engine, since, until):
        by_model[run.model].append(run)
    period = Period(since, until, f"{since:%Y-%m-%d}..{until:%Y-%m-%d}")
    out = {}
    for model, runs in by_model.items():
        newest = max(runs, key=lambda r: (r.finished_at, r.id)).identity
        figures = figures_of([r for r in runs if r.identity == newest], period, rounds)
        lesion = figures.lesion_level
        out[model] = {"name": figures.model_name, "version": figures.model_version, "studies": figures.studies,
                      "cpm": None if lesion is None else lesion.as_dict()["cpm"],
                      "acceptance": figures.acceptance.as_dict()}
    return out


def models_overview(engine: Engine, settings: Settings, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Every route: its live model, shadows and retired models with their figures, its changes and comparisons."""
    figures = model_figures(engine, since, until)
    with engine.connect() as conn:
        comparisons = conn.execute(select(ModelComparison).order_by(ModelComparison.id)).all()
    out = []
    for state in route_states(engine, settings.pipeline.routes):
        models = [(state.current.model, "live"), *((m, "shadow") for m in state.current.shadows),
                  *((m, "retired") for m in state.retired)]
        out.append({
            "route": state.name, "mode": state.current.mode, "configured_model": state.configured.model,
            "models": [{"model": m, "role": role, "figures": figures.get(m)} for m, role in models],
            "changes": [c.as_dict() for c in state.history],
            "comparisons": [{"id": c.id, "created_at": c.created_at.isoformat(), "live_model": c.live_model,
                             "candidate_model": c.candidate_model, "studies": c.studies,
                             "reviewed_studies": c.figures.get("reviewed_studies"),
                             "cpm_difference": (c.figures.get("lesion_level") or {}).get("difference", {}).get("cpm"),
                             "report_path": c.report_path}
                            for c in comparisons if c.route == state.name],
        })
    return out


def _cpm(value: dict[str, Any] | None, signed: bool = False) -> str:
    if not value or value.get("value") is None:
        return "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    ci = value.get("ci95")
    return fmt.format(value["value"]) + (f" ({fmt.format(ci[0])} to {fmt.format(ci[1])})" if ci and None not in ci
                                         else "")


@models_app.command("list")
def models_list(config: ConfigOpt = None, since: DateOpt = None, as_json: JsonOpt = False) -> None:
    """Per route: the live model, the shadows and the retired models, each with its figures (studies read, lesion
    CPM on reviewed studies, acceptance of its findings), the route's changes and its comparisons."""
    settings = settings_from(config)
    engine = open_database(settings)
    overview = models_overview(engine, settings, _utc(since), datetime.now(timezone.utc))
    if as_json:
        dump_json(overview)
        return
    for route in overview:
        table = Table("role", "model", "card", "studies", "CPM (95% CI)", "accepted",
                      title=f"route {route['route']} ({route['mode']}; configured model {route['configured_model']})")
        for m in route["models"]:
            f = m["figures"] or {}
            accepted = f.get("acceptance") or {}
            table.add_row(m["role"].upper(), m["model"], f"{f.get('name', '-')} {f.get('version', '')}".strip(),
                          str(f.get("studies", 0)), _cpm(f.get("cpm")),
                          "-" if accepted.get("value") is None else
                          f"{accepted['value']:.2f} {accepted['successes']}/{accepted['n']}")
        console.print(table)
        for c in route["changes"]:
            console.print(f"  {c['at'][:19]} {c['change'].upper()} {c['model']} (replaced {c['replaced']}) by "
                          f"{c['by']}" + (f", comparison {c['comparison_id']}" if c["comparison_id"] else "")
                          + (f": {c['reason']}" if c["reason"] else ""))
        for c in route["comparisons"]:
            console.print(f"  comparison {c['id']} {c['created_at'][:19]}: {c['candidate_model']} against "
                          f"{c['live_model']}, {c['studies']} studies ({c['reviewed_studies']} reviewed), CPM "
                          f"difference {_cpm(c['cpm_difference'], signed=True)}")
