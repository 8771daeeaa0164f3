"""Drift: a model's inputs, outputs and outcomes per period against a baseline window, with control limits.

Every watched metric is the mean (or median) of per-unit values: 0/1 for a rate (a study flagged, a study of one
scanner, a positive call the report confirms), a number otherwise (findings of a study, a finding's score, a study's
HU histogram distance to the baseline's). Each period after the baseline is standardised against the baseline with
the period's n and the baseline's n0, so that a short baseline's own noise is allowed for:
``z = (value - baseline) / (sd * sqrt(1/n + 1/n0))``, a rate on Anscombe's arcsine scale (where its spread no
longer depends on the rate: a p-chart's normal limits alarm too often on a low rate's long upper tail). A period
breaches when ``|z|`` passes ``sigma`` or a two-sided CUSUM of the z values passes ``cusum_h``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np
from sqlalchemy import Engine, exists, func, insert, literal, select, text

from node.db.schema import AuditEvent, utcnow
from node.events import AuditKind, FeedbackVerdict, ReportLabelValue
from node.monitor.done_runs import ReadRun, load_runs
from node.monitor.figures import ACCEPTED, by_identity_and_period, card_facts
from node.monitor.periods import Period, PeriodKind, periods_between
from node.monitor.stats import jensen_shannon

MEDIAN_SE = math.sqrt(math.pi / 2)
"""The standard error of a median over that of a mean, for normal data."""


class Group(StrEnum):
    """What a metric watches."""

    INPUTS = "inputs"
    OUTPUTS = "outputs"
    OUTCOMES = "outcomes"


@dataclass(frozen=True)
class DriftOptions:
    """Control limits: the baseline is the first ``baseline_periods`` of the window, from the first with studies
    of the model; a period with fewer than ``min_n`` units is shown but never judged.

    The defaults keep a stable rate quiet, as a node watches some twenty metrics per model: simulated over 8 judged
    weeks after a 4-week baseline, at 10 to 100 studies a week and rates of 2-30%, under 2% of series raise any
    alarm (3 sigma, k 0.5, h 5: about 9%); a rate going from 10% to 40% at 50 studies a week is caught in its
    first week 8 times in 10, and in the weeks after when not."""

    baseline_periods: int = 4
    sigma: float = 3.5
    cusum_k: float = 0.75
    cusum_h: float = 6.0
    min_n: int = 5

    def __post_init__(self) -> None:
        if self.baseline_periods < 1:
            raise ValueError(f"baseline_periods must be >= 1, got {self.baseline_periods}")
        if self.sigma <= 0 or self.cusum_h <= 0 or self.cusum_k < 0:
            raise ValueError("sigma and cusum_h must be positive and cusum_k not negative")


Units = Callable[[Sequence[ReadRun]], list[float]]


@dataclass(frozen=True)
class Metric:
    """A watched figure: how to read its units from a period's runs, and how to judge it."""

    name: str
    group: Group
    units: Units
    rate: bool = False
    median: bool = False
    upper_only: bool = False
    sd_floor: float = 0.0
    """The least unit spread assumed (a baseline where every study had 5 mm slices has none)."""


@dataclass(frozen=True)
class Point:
    """One period of a chart."""

    period: Period
    value: float | None
    n: int
    z: float | None = None
    cusum_high: float = 0.0
    cusum_low: float = 0.0
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chart:
    """One metric of one model identity over the window: its baseline and each later period."""

    model_name: str
    model_version: str
    metric: str
    group: Group
    baseline: float | None
    baseline_n: int
    points: tuple[Point, ...] = field(default=())

    def alarms(self) -> list[Alarm]:
        return [Alarm(self.model_name, self.model_version, self.metric, self.group, p.period.label, p.value,
                      self.baseline, p.z, p.n, p.rules) for p in self.points if p.rules]


@dataclass(frozen=True)
class Alarm:
    """A breach of one metric's control limits in one period."""

    model_name: str
    model_version: str
    metric: str
    group: Group
    period: str
    value: float | None
    baseline: float | None
    z: float | None
    n: int
    rules: tuple[str, ...]

    @property
    def key(self) -> str:
        """What makes an alarm one audit row: model identity, metric and period."""
        return f"{self.model_name} {self.model_version}|{self.metric}|{self.period}"

    def as_dict(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_version": self.model_version, "metric": self.metric,
                "group": str(self.group), "period": self.period, "value": _round(self.value),
                "baseline": _round(self.baseline), "z": _round(self.z), "n": self.n, "rules": list(self.rules),
                "key": self.key}

    def __str__(self) -> str:
        return (f"{self.model_name} {self.model_version} {self.period}: {self.metric} {_fmt(self.value)} against "
                f"baseline {_fmt(self.baseline)} (z {_fmt(self.z, 2)}, n {self.n}; {', '.join(self.rules)})")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# What each metric reads from a period's runs.
def _share(key: Callable[[ReadRun], str], category: str) -> Units:
    return lambda runs: [float(key(r) == category) for r in runs]


def _fact(run: ReadRun, name: str) -> Any:
    return run.input_facts.get(name)


def scanner(run: ReadRun) -> str:
    """The scanner model a run read ("manufacturer model name"), "unknown" when its facts do not say."""
    parts = [_fact(run, "manufacturer"), _fact(run, "manufacturer_model_name")]
    return " ".join(str(p) for p in parts if p) or "unknown"


def kernel(run: ReadRun) -> str:
    return str(_fact(run, "convolution_kernel") or "unknown")


def _thickness(runs: Sequence[ReadRun]) -> list[float]:
    return [float(v) for r in runs if (v := _fact(r, "slice_thickness_mm")) is not None]


def _contrast(runs: Sequence[ReadRun]) -> list[float]:
    return [float(bool(_fact(r, "contrast"))) for r in runs if "contrast" in r.input_facts]


def _histogram(run: ReadRun) -> list[float] | None:
    h = _fact(run, "hu_histogram")
    return [float(v) for v in h] if isinstance(h, list) and sum(h) > 0 else None


def _distances(reference: Sequence[float]) -> Units:
    return lambda runs: [jensen_shannon(h, reference) for r in runs if (h := _histogram(r)) is not None]


def _flagged(runs: Sequence[ReadRun]) -> list[float]:
    return [float(bool(r.findings)) for r in runs]


def _findings(runs: Sequence[ReadRun]) -> list[float]:
    return [float(len(r.findings)) for r in runs]


def _scores(runs: Sequence[ReadRun]) -> list[float]:
    return [float(f["score"]) for r in runs for f in r.findings]


def _decided(run: ReadRun, finding_type: str) -> bool | None:
    label = run.report.get(finding_type)
    return None if label in (None, ReportLabelValue.UNCERTAIN) else label == ReportLabelValue.POSITIVE


def _ppv(finding_type: str) -> Units:
    return lambda runs: [float(truth) for r in runs if r.positive(finding_type)
                         and (truth := _decided(r, finding_type)) is not None]


def _discordance(finding_type: str) -> Units:
    return lambda runs: [float(truth != r.positive(finding_type)) for r in runs
                         if (truth := _decided(r, finding_type)) is not None]


def _acceptance(runs: Sequence[ReadRun]) -> list[float]:
    return [float(v.verdict in ACCEPTED) for r in runs for review in r.reviews for v in review.verdicts
            if v.finding_index is not None and v.verdict != FeedbackVerdict.MISSED]


def metrics_for(baseline: Sequence[ReadRun], runs: Sequence[ReadRun], finding_types: Sequence[str]) -> list[Metric]:
    """Every metric watched for one model identity: a share per scanner model and kernel seen (in the baseline or
    later), slice thickness, contrast, HU histogram distance; positive rate, findings per study, mean score;
    PPV and discordance with the reports per finding type, and acceptance of findings."""
    histograms = [h for r in baseline if (h := _histogram(r)) is not None]
    reference = list(np.mean(histograms, axis=0)) if histograms else None
    metrics = [Metric(f"scanner share: {c}", Group.INPUTS, _share(scanner, c), rate=True)
               for c in sorted({scanner(r) for r in runs})]
    metrics += [Metric(f"kernel share: {c}", Group.INPUTS, _share(kernel, c), rate=True)
                for c in sorted({kernel(r) for r in runs})]
    metrics += [Metric("slice thickness mm (median)", Group.INPUTS, _thickness, median=True, sd_floor=0.1),
                Metric("contrast share", Group.INPUTS, _contrast, rate=True)]
    if reference is not None:
        metrics.append(Metric("HU histogram distance (Jensen-Shannon)", Group.INPUTS, _distances(reference),
                              upper_only=True, sd_floor=0.005))
    metrics += [Metric("positive rate", Group.OUTPUTS, _flagged, rate=True),
                Metric("findings per study", Group.OUTPUTS, _findings, sd_floor=0.1),
                Metric("mean score", Group.OUTPUTS, _scores, sd_floor=0.01)]
    for t in finding_types:
        metrics += [Metric(f"PPV: {t}", Group.OUTCOMES, _ppv(t), rate=True),
                    Metric(f"discordance with reports: {t}", Group.OUTCOMES, _discordance(t), rate=True)]
    metrics.append(Metric("acceptance of findings", Group.OUTCOMES, _acceptance, rate=True))
    return metrics


def _centre(values: Sequence[float], metric: Metric) -> float:
    return float(np.median(values) if metric.median else np.mean(values))


def _unit_sd(values: Sequence[float], metric: Metric) -> float:
    """The spread of one unit: binomial for a rate (a baseline of all 0 or all 1 taken as one more of each, so
    that its limits are not zero-width), the sample deviation otherwise, at least ``sd_floor``."""
    if metric.rate:
        n, x = len(values), sum(values)
        p = (x + 1) / (n + 2) if x in (0, n) else x / n
        sd = math.sqrt(p * (1 - p))
    else:
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return max(sd, metric.sd_floor) * (MEDIAN_SE if metric.median else 1.0)


def _anscombe(units: Sequence[float]) -> float:
    """The variance-stabilised rate: arcsin sqrt((x + 3/8) / (n + 3/4)), of variance 1 / (4n) whatever the rate."""
    return math.asin(math.sqrt((sum(units) + 0.375) / (len(units) + 0.75)))


def _z(metric: Metric, units: Sequence[float], base_units: Sequence[float], value: float, baseline: float,
       sd: float) -> float:
    """The period's standardised distance from the baseline, the baseline's own noise allowed for."""
    spread = math.sqrt(1 / len(units) + 1 / len(base_units))
    if metric.rate:
        return 2 * (_anscombe(units) - _anscombe(base_units)) / spread
    return (value - baseline) / (sd * spread)


def chart(metric: Metric, periods: dict[Period, list[ReadRun]], identity: tuple[str, str],
          options: DriftOptions) -> Chart:
    """The metric's baseline (pooled units of the first periods) and each later period judged against it."""
    ordered = sorted(periods)
    base_units = [u for p in ordered[:options.baseline_periods] for u in metric.units(periods[p])]
    judged = len(base_units) >= options.min_n
    baseline = _centre(base_units, metric) if base_units else None
    sd = _unit_sd(base_units, metric) if judged else 0.0
    high = low = 0.0
    points = []
    for period in ordered[options.baseline_periods:]:
        units = metric.units(periods[period])
        value = _centre(units, metric) if units else None
        if not judged or value is None or baseline is None or len(units) < options.min_n:
            points.append(Point(period, value, len(units), None, high, low))
            continue
        z = _z(metric, units, base_units, value, baseline, sd)
        high = max(0.0, high + z - options.cusum_k)
        low = 0.0 if metric.upper_only else max(0.0, low - z - options.cusum_k)
        rules = []
        if z > options.sigma or (not metric.upper_only and z < -options.sigma):
            rules.append(f"{'above' if z > 0 else 'below'} {options.sigma:g} sigma")
        if high > options.cusum_h or low > options.cusum_h:
            rules.append(f"CUSUM {'up' if high > options.cusum_h else 'down'}")
        points.append(Point(period, value, len(units), z, high, low, tuple(rules)))
    return Chart(identity[0], identity[1], metric.name, metric.group, baseline, len(base_units), tuple(points))


def charts_of(grouped: dict[tuple[str, str], dict[Period, list[ReadRun]]],
              options: DriftOptions | None = None) -> list[Chart]:
    """Every metric's chart for every model identity of ``grouped`` (runs by identity and period)."""
    options = options or DriftOptions()
    out = []
    for identity in sorted(grouped):
        ordered = sorted(grouped[identity])
        started = next((k for k, p in enumerate(ordered) if grouped[identity][p]), len(ordered))
        ordered = ordered[started:]  # the baseline starts with the model's first studies in the window
        periods = {p: grouped[identity][p] for p in ordered}
        baseline = [r for p in ordered[:options.baseline_periods] for r in periods[p]]
        runs = [r for p in ordered for r in periods[p]]
        if not runs:
            continue
        facts = card_facts(runs[0].model)
        types = facts.finding_types if facts else tuple(sorted({str(f["label"]) for r in runs for f in r.findings}))
        out += [chart(m, periods, identity, options) for m in metrics_for(baseline, runs, types)]
    return out


def compute_drift(engine: Engine, since: datetime, until: datetime, kind: PeriodKind = PeriodKind.WEEK,
                  model_name: str | None = None, options: DriftOptions | None = None) -> list[Chart]:
    """The charts of [since, until): its first periods are the baseline, the rest are judged."""
    if kind == PeriodKind.ALL:
        raise ValueError("drift needs day or week periods")
    periods = periods_between(since, until, kind)
    return charts_of(by_identity_and_period(load_runs(engine, since, until, model_name), periods), options)


def record_alarms(engine: Engine, alarms: Sequence[Alarm]) -> list[Alarm]:
    """Audit each alarm once (one row per model identity, metric and period, whoever checks and however often);
    returns those recorded now."""
    recorded = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # concurrent checkers: one at a time decides what is new
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('ctnode drift alarms'))"))
        for alarm in alarms:
            known = exists().where(AuditEvent.kind == str(AuditKind.DRIFT_ALARM),
                                   AuditEvent.detail["key"].as_string() == alarm.key)
            values = select(literal(str(AuditKind.DRIFT_ALARM)), literal(utcnow(), AuditEvent.at.type),
                            literal(alarm.as_dict(), AuditEvent.detail.type)).where(~known)
            added = insert(AuditEvent).from_select(["kind", "at", "detail"], values).returning(AuditEvent.id)
            if conn.execute(added).first() is not None:
                recorded.append(alarm)
    return recorded


def alarm_counts(engine: Engine) -> dict[tuple[str, str], int]:
    """Audited drift alarms per model (name and version, as one string) and metric."""
    model = AuditEvent.detail["model_name"].as_string()
    version = AuditEvent.detail["model_version"].as_string()
    metric = AuditEvent.detail["metric"].as_string()
    with engine.connect() as conn:
        rows = conn.execute(select(model, version, metric, func.count()).where(
            AuditEvent.kind == str(AuditKind.DRIFT_ALARM)).group_by(model, version, metric))
        return {(f"{m} {v}", k): int(n) for m, v, k, n in rows}
