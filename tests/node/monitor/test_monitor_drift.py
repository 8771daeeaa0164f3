"""Drift charts on hand-made weekly series: quiet when stable, alarmed in the first changed week; alarms audited once
(SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from node.db.schema import AuditEvent
from node.events import AuditKind
from node.monitor.done_runs import ReadRun
from node.monitor.drift import Chart, DriftOptions, charts_of, compute_drift, record_alarms
from node.monitor.periods import Period, PeriodKind, periods_between
from tests.node.monitor.conftest import MONDAY, Site, finding

WEEKS = periods_between(MONDAY, MONDAY + timedelta(weeks=12), PeriodKind.WEEK)  # 2024-W18 .. W29
HISTOGRAM = np.array([0.25, 0.03, 0.02, 0.29, 0.36, 0.03, 0.01, 0.005, 0.003, 0.001, 0.001, 0.0])
Study = Callable[[int, np.random.Generator], tuple[list[dict[str, Any]], dict[str, Any]]]


def facts(kernel: str = "STANDARD", histogram: np.ndarray | None = None, **more: Any) -> dict[str, Any]:
    return {"manufacturer": "GE MEDICAL SYSTEMS", "manufacturer_model_name": "LightSpeed16",
            "convolution_kernel": kernel, "slice_thickness_mm": 1.25, "contrast": False,
            "hu_histogram": list(HISTOGRAM if histogram is None else histogram), **more}


def series(study: Study, per_week: int = 100, seed: int = 7) -> dict[tuple[str, str], dict[Period, list[ReadRun]]]:
    """Twelve weeks of ``per_week`` chest runs, each made by ``study(week index, rng)`` -> (findings, facts)."""
    rng = np.random.default_rng(seed)
    weeks: dict[Period, list[ReadRun]] = {}
    n = 0
    for k, week in enumerate(WEEKS):
        weeks[week] = []
        for _ in range(per_week):
            n += 1
            findings, input_facts = study(k, rng)
            weeks[week].append(ReadRun(n, n, "ctnode-chest", "ctnode-chest", "0.2.0", findings, input_facts, None,
                                       week.start + timedelta(hours=1)))
    return {("ctnode-chest", "0.2.0"): weeks}


def flagged_at(rate: Callable[[int], float]) -> Study:
    return lambda k, rng: ([finding(0.6)] if rng.random() < rate(k) else [], facts())


def alarmed(charts: list[Chart]) -> dict[str, list[str]]:
    """The periods each alarmed metric breached in."""
    return {c.metric: [a.period for a in c.alarms()] for c in charts if c.alarms()}


def test_a_stable_positive_rate_with_binomial_noise_raises_no_alarm_over_twelve_weeks() -> None:
    for seed in range(5):
        charts = charts_of(series(flagged_at(lambda k: 0.10), seed=seed))
        assert alarmed(charts) == {}, seed
    [rate] = [c for c in charts if c.metric == "positive rate"]
    assert rate.baseline_n == 400 and len(rate.points) == 8 and all(p.z is not None for p in rate.points)


def test_a_jump_from_10_to_40_percent_alarms_in_the_first_changed_week() -> None:
    charts = charts_of(series(flagged_at(lambda k: 0.10 if k < 8 else 0.40)))
    [rate] = [c for c in charts if c.metric == "positive rate"]
    first = next(a for a in rate.alarms())
    assert first.period == "2024-W26" and first.value is not None and first.value > 0.3
    assert first.baseline == pytest.approx(0.1, abs=0.04) and "above 3.5 sigma" in first.rules
    assert all(p.rules for p in rate.points[4:])  # and every changed week after it
    assert not any(p.rules for p in rate.points[:4])
    assert alarmed(charts)["findings per study"][0] == "2024-W26"


def test_a_kernel_mix_change_alarms_on_the_kernel_shares() -> None:
    def study(k: int, rng: np.random.Generator) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        lung = k >= 6 and rng.random() < 0.5
        return ([finding(0.6)] if rng.random() < 0.1 else [], facts("LUNG" if lung else "STANDARD"))

    alarms = alarmed(charts_of(series(study)))
    assert alarms["kernel share: LUNG"][0] == "2024-W24" and alarms["kernel share: STANDARD"][0] == "2024-W24"
    assert set(alarms) == {"kernel share: LUNG", "kernel share: STANDARD"}


def test_an_hu_histogram_shift_alarms_on_the_distance_to_the_baseline() -> None:
    shifted = HISTOGRAM.copy()
    shifted[3] += 0.08  # more fat, less soft tissue: another background mix
    shifted[4] -= 0.08

    def study(k: int, rng: np.random.Generator) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        profile = shifted if k >= 9 else HISTOGRAM
        noisy = rng.dirichlet(profile * 300 + 1e-3)
        return [], facts(histogram=np.round(noisy, 4))

    charts = charts_of(series(study, per_week=40))
    [distance] = [c for c in charts if c.metric.startswith("HU histogram distance")]
    assert [a.period for a in distance.alarms()][0] == "2024-W27"
    assert not any(p.rules for p in distance.points[:5])
    assert set(alarmed(charts)) == {distance.metric}


def test_a_week_with_too_few_studies_is_shown_but_never_judged() -> None:
    grouped = series(flagged_at(lambda k: 0.10 if k < 8 else 1.0), per_week=4)
    [rate] = [c for c in charts_of(grouped) if c.metric == "positive rate"]
    assert rate.alarms() == [] and all(p.z is None and p.n == 4 for p in rate.points)
    [rate] = [c for c in charts_of(grouped, DriftOptions(min_n=4)) if c.metric == "positive rate"]
    assert rate.alarms()[0].period == "2024-W26"


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="baseline_periods"):
        DriftOptions(baseline_periods=0)


def drift_alarm_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [d for (d,) in conn.execute(select(AuditEvent.detail).where(
            AuditEvent.kind == str(AuditKind.DRIFT_ALARM)).order_by(AuditEvent.id))]


def test_a_breach_is_audited_once_per_model_metric_and_period(engine: Engine, site: Site) -> None:
    rng = np.random.default_rng(3)
    for k, week in enumerate(WEEKS[:7]):
        for i in range(30):
            flagged = rng.random() < (0.1 if k < 5 else 0.6)
            site.run([finding(0.6)] if flagged else [], week.start + timedelta(hours=1 + i), facts=facts())
    charts = compute_drift(engine, MONDAY, WEEKS[6].end, PeriodKind.WEEK, options=DriftOptions(baseline_periods=4))
    alarms = [a for c in charts for a in c.alarms()]
    assert {(a.metric, a.period) for a in alarms} >= {("positive rate", "2024-W23"), ("positive rate", "2024-W24")}
    assert [a.key for a in record_alarms(engine, alarms)] == [a.key for a in alarms]
    assert record_alarms(engine, alarms) == []  # checked again: nothing new
    rows = drift_alarm_rows(engine)
    assert len(rows) == len(alarms) and len({r["key"] for r in rows}) == len(rows)
    rate = next(r for r in rows if r["metric"] == "positive rate" and r["period"] == "2024-W23")
    assert (rate["model_name"], rate["model_version"], rate["group"]) == ("ctnode-chest", "0.2.0", "outputs")
    assert rate["n"] == 30 and rate["value"] > 0.3 and rate["z"] > 3.5
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(AuditEvent)) == len(alarms)
