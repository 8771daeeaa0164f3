"""`ctnode monitor`: real-world figures per model and period, and the drift alarms of the same window."""

from __future__ import annotations

from datetime import datetime, timezone
from itertools import groupby
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from node.cli.common import ConfigOpt, JsonOpt, console, dump_json, open_database, settings_from
from node.monitor.drift import DriftOptions, compute_drift, record_alarms
from node.monitor.figures import Figures, compute_figures
from node.monitor.periods import PeriodKind, window_back
from node.monitor.stats import Proportion

if TYPE_CHECKING:
    from detector.evaluate.froc import Interval

JUDGED_PERIODS = 8
"""Periods after the baseline that the default window shows."""
DateOpt = Annotated[Optional[datetime], typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])]

app = typer.Typer(help="Real-world figures and drift of each model.", add_completion=False)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


def _ratio(p: Proportion) -> str:
    """A share, its count and, below, its Wilson 95% interval."""
    if p.value is None or p.ci95 is None:
        return "-"
    return f"{p.value:.2f} {p.successes}/{p.n}\n{p.ci95[0]:.2f}-{p.ci95[1]:.2f}"


def _interval(i: Interval) -> str:
    if i.value != i.value:  # NaN: nothing to measure
        return "-"
    return f"{i.value:.2f}" + (f"\n{i.ci95[0]:.2f}-{i.ci95[1]:.2f}" if i.ci95 else "")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _tables(figures: list[Figures]) -> list[Table]:
    """Per model identity: volume and acceptance, study-level accuracy per finding type, lesion level."""
    tables = []
    for (name, version), group in groupby(figures, key=lambda f: (f.model_name, f.model_version)):
        rows = list(group)
        volume = Table("period", "studies", "flagged", "findings /study", "accepted", "to result s p50/p95",
                       title=f"{name} {version} (Wilson 95% CIs below)")
        lesion = Table("period", "reviewed studies", "lesions", "CPM", "sensitivity at op", "FP/scan at op",
                       title=f"{name} {version}: lesion level on reviewed studies (bootstrap 95% CIs)")
        accuracy: dict[str, Table] = {}
        for f in rows:
            volume.add_row(f.period.label, str(f.studies), _ratio(f.flagged), f"{f.findings_per_study or 0:.2f}",
                           _ratio(f.acceptance), f"{_seconds(f.latency_median_s)}\n{_seconds(f.latency_p95_s)}")
            if f.lesion_level:
                ll = f.lesion_level
                lesion.add_row(f.period.label, str(ll.studies), str(ll.lesions), _interval(ll.cpm),
                               _interval(ll.sensitivity), _interval(ll.fp_per_scan))
            for s in f.study_level:
                table = accuracy.setdefault(s.finding_type, Table(
                    "period", "sens.", "spec.", "PPV", "NPV", "uncert.", "unlab.",
                    title=f"{name} {version}: {s.finding_type} against the reports"))
                table.add_row(f.period.label, _ratio(s.sensitivity), _ratio(s.specificity), _ratio(s.ppv),
                              _ratio(s.npv), str(s.uncertain), str(s.unlabelled))
        tables += [volume, *accuracy.values(), *([lesion] if lesion.row_count else [])]
    return tables


@app.command()
def monitor(
    config: ConfigOpt = None,
    since: DateOpt = None,
    until: DateOpt = None,
    period: Annotated[PeriodKind, typer.Option(help="Figures per minute (a simulated site), hour, day, ISO week, or for the whole window.")]
    = PeriodKind.WEEK,
    model: Annotated[Optional[str], typer.Option(help="Only this model (card name, e.g. ctnode-chest).")] = None,
    baseline: Annotated[int, typer.Option(min=1, help="Drift baseline: the window's first N periods.")] = 4,
    as_json: JsonOpt = False,
) -> None:
    """Figures per model and period (studies read, flagged share, findings per study, acceptance, study-level
    accuracy against the reports, lesion-level CPM on reviewed studies, time to result) and drift alarms.

    Times are UTC; the default window is the baseline and 8 periods after it, up to now. Each drift alarm is
    audited once."""
    engine = open_database(settings_from(config))
    until = _utc(until) if until else datetime.now(timezone.utc)
    steps = PeriodKind.WEEK if period == PeriodKind.ALL else period
    since = _utc(since) if since else window_back(until, steps, baseline + JUDGED_PERIODS)
    if until <= since:
        console.print(f"[red]--until ({until:%Y-%m-%d %H:%M}) must be after --since ({since:%Y-%m-%d %H:%M})[/red]")
        raise typer.Exit(2)
    figures = compute_figures(engine, since, until, period, model)
    charts = compute_drift(engine, since, until, steps, model, DriftOptions(baseline_periods=baseline))
    alarms = [a for c in charts for a in c.alarms()]
    new = {a.key for a in record_alarms(engine, alarms)}
    if as_json:
        dump_json({"since": since, "until": until, "period": str(period), "figures": [f.as_dict() for f in figures],
                   "drift_alarms": [{**a.as_dict(), "new": a.key in new} for a in alarms]})
        return
    if not figures:
        console.print(f"no studies read between {since:%Y-%m-%d %H:%M} and {until:%Y-%m-%d %H:%M} UTC")
    for table in _tables(figures):
        console.print(table)
    console.print(f"[bold]drift alarms[/bold] ({steps} periods, baseline the first {baseline}): {len(alarms)}")
    for a in alarms:
        console.print(f"  [red]ALARM[/red] {a}" + (" [bold](new)[/bold]" if a.key in new else ""))
