"""The Prometheus view of `ctnode monitor`: the last 7 days' figures per model and the drift charts' newest breaches.

Computed from the database when scraped, at most once per ``refresh_s`` (a scrape in between gets the last
figures): a week of runs and a few weeks of drift are too much to read on every scrape. Every breach found is
audited once (``record_alarms``), so that a node whose figures are scraped raises its alarms without anyone
running `ctnode monitor`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from node.monitor.drift import Chart, DriftOptions, alarm_counts, compute_drift, record_alarms
from node.monitor.figures import Figures, compute_figures
from node.monitor.periods import PeriodKind, window_back
from node.monitor.stats import Proportion

REFRESH_S = 300.0
FIGURES_WINDOW = timedelta(days=7)
JUDGED_WEEKS = 8
"""Weeks judged after the baseline weeks in the drift window the collector reads."""


def _proportion(family: GaugeMetricFamily, labels: list[str], p: Proportion) -> None:
    """The value and its Wilson bounds, as estimate="value" / "ci_low" / "ci_high" (none when n is 0)."""
    if p.value is None or p.ci95 is None:
        return
    for estimate, value in (("value", p.value), ("ci_low", p.ci95[0]), ("ci_high", p.ci95[1])):
        family.add_metric([*labels, estimate], value)


def figure_families(figures: list[Figures]) -> list[Metric]:
    """Gauges of one window's figures, labelled by model name and version."""
    model = ["model", "version"]
    studies = GaugeMetricFamily("ctnode_monitor_studies", "Studies read (done runs) in the last 7 days.", labels=model)
    findings = GaugeMetricFamily("ctnode_monitor_findings_per_study", "Findings per study read in the last 7 days.",
                                 labels=model)
    flagged = GaugeMetricFamily("ctnode_monitor_flagged_ratio",
                                "Share of studies with at least one finding, last 7 days (Wilson 95% bounds).",
                                labels=[*model, "estimate"])
    accepted = GaugeMetricFamily("ctnode_monitor_acceptance_ratio",
                                 "Findings readers confirmed or edited of those they decided on, last 7 days.",
                                 labels=[*model, "estimate"])
    accuracy = GaugeMetricFamily("ctnode_monitor_study_accuracy",
                                 "Study-level sensitivity, specificity, PPV, NPV against the reports, last 7 days.",
                                 labels=[*model, "finding_type", "figure", "estimate"])
    cpm = GaugeMetricFamily("ctnode_monitor_cpm", "Lesion-level CPM on studies with reader feedback, last 7 days.",
                            labels=[*model, "estimate"])
    latency = GaugeMetricFamily("ctnode_monitor_result_latency_seconds",
                                "Seconds from a study's last image to its result, last 7 days.",
                                labels=[*model, "quantile"])
    for f in figures:
        labels = [f.model_name, f.model_version]
        studies.add_metric(labels, f.studies)
        findings.add_metric(labels, f.findings_per_study or 0.0)
        _proportion(flagged, labels, f.flagged)
        _proportion(accepted, labels, f.acceptance)
        for s in f.study_level:
            for name in ("sensitivity", "specificity", "ppv", "npv"):
                _proportion(accuracy, [*labels, s.finding_type, name], getattr(s, name))
        if f.lesion_level is not None and f.lesion_level.cpm.value == f.lesion_level.cpm.value:  # not NaN
            cpm.add_metric([*labels, "value"], f.lesion_level.cpm.value)
            if f.lesion_level.cpm.ci95:
                cpm.add_metric([*labels, "ci_low"], f.lesion_level.cpm.ci95[0])
                cpm.add_metric([*labels, "ci_high"], f.lesion_level.cpm.ci95[1])
        for q, value in (("0.5", f.latency_median_s), ("0.95", f.latency_p95_s)):
            if value is not None:
                latency.add_metric([*labels, q], value)
    return [studies, findings, flagged, accepted, accuracy, cpm, latency]


def drift_families(charts: list[Chart], counts: dict[tuple[str, str], int]) -> list[Metric]:
    """Per chart, whether its newest judged period breaches; per model and metric, the alarms audited so far."""
    breach = GaugeMetricFamily("ctnode_drift_breach",
                               "1 when a watched metric's newest judged week is outside its control limits.",
                               labels=["model", "version", "metric", "group"])
    for c in charts:
        judged = [p for p in c.points if p.z is not None]
        if judged:
            breach.add_metric([c.model_name, c.model_version, c.metric, str(c.group)], float(bool(judged[-1].rules)))
    alarms = CounterMetricFamily("ctnode_drift_alarms", "Drift alarms audited (one per model, metric and period).",
                                 labels=["model", "metric"])
    for (model, metric), n in sorted(counts.items()):
        alarms.add_metric([model, metric], n)
    return [breach, alarms]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class MonitorCollector(Collector):
    """The figures and drift gauges as of ``clock()``, recomputed at most every ``refresh_s``."""

    def __init__(self, engine: Engine, refresh_s: float = REFRESH_S, options: DriftOptions | None = None,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self.engine, self.refresh_s, self.options, self.clock = engine, refresh_s, options or DriftOptions(), clock
        self._lock = threading.Lock()
        self._families: list[Metric] = []
        self._at = -float("inf")

    def compute(self) -> list[Metric]:
        """Read the figures and drift charts as of now, audit new alarms, and return the families."""
        now = self.clock()
        figures = compute_figures(self.engine, now - FIGURES_WINDOW, now, PeriodKind.ALL)
        since = window_back(now, PeriodKind.WEEK, self.options.baseline_periods + JUDGED_WEEKS)
        charts = compute_drift(self.engine, since, now, PeriodKind.WEEK, options=self.options)
        record_alarms(self.engine, [a for c in charts for a in c.alarms()])
        return figure_families(figures) + drift_families(charts, alarm_counts(self.engine))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._at >= self.refresh_s:
                self._families = self.compute()
                self._at = time.monotonic()
            families = list(self._families)
        yield from families
