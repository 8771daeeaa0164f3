"""Real-world figures on a hand-made week of ten chest studies (SQLite and PostgreSQL): counts, Wilson intervals,
acceptance, study-level accuracy, lesion-level CPM through the evaluator, time to result."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from node.events import FeedbackVerdict as V
from node.events import RunStatus
from node.monitor.figures import compute_figures
from node.monitor.periods import PeriodKind, periods_between
from node.monitor.stats import Proportion, jensen_shannon, quantile, wilson
from tests.node.monitor.conftest import MONDAY, Site, finding

WEEK_END = MONDAY + timedelta(days=7)


def test_wilson_matches_the_published_intervals() -> None:
    # Newcombe (1998), table I: 0/10 -> 0-0.2775; the rest from the score formula worked by hand
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-5)
    assert wilson(4, 5) == pytest.approx((0.3755, 0.9638), abs=5e-5)
    assert wilson(2, 3) == pytest.approx((0.2077, 0.9385), abs=5e-5)
    assert wilson(0, 0) is None and Proportion(0, 0).value is None
    with pytest.raises(ValueError, match="within 0..3"):
        wilson(4, 3)


def test_quantiles_and_histogram_distance() -> None:
    assert quantile([10, 20, 30, 40], 0.5) == 25.0 and quantile([], 0.5) is None
    assert jensen_shannon([1, 0], [1, 0]) == 0.0
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert jensen_shannon([2, 2], [1, 1]) == 0.0  # normalised first
    # M = (0.75, 0.25): KL(P|M) = 0.5 log2(2/3) + 0.5 log2(2) = 0.2075, KL(Q|M) = log2(4/3) = 0.4150
    assert jensen_shannon([0.5, 0.5], [1.0, 0.0]) == pytest.approx(((0.2075187 + 0.4150375) / 2) ** 0.5, abs=1e-6)


def test_periods_cut_a_window_into_iso_weeks_and_days() -> None:
    weeks = periods_between(MONDAY + timedelta(days=3), MONDAY + timedelta(days=15), PeriodKind.WEEK)
    assert [p.label for p in weeks] == ["2024-W18", "2024-W19", "2024-W20"] and weeks[0].start == MONDAY
    days = periods_between(MONDAY, MONDAY + timedelta(days=2), PeriodKind.DAY)
    assert [p.label for p in days] == ["2024-04-29", "2024-04-30"]
    with pytest.raises(ValueError, match="empty"):
        periods_between(MONDAY, MONDAY, PeriodKind.DAY)


def ten_studies(site: Site) -> None:
    """Ten chest studies read in week 18 (run i finished i hours after Monday, 10 i seconds after its last image).

    Against the reports (lung_nodule): TP r1-r4, FP r5, FN r6, TN r7-r8, uncertain r9 (flagged), unlabelled r10.
    Reviews: r1 confirmed + rejected, r2 edited (moved 3 mm), r3 confirmed + a missed lesion, r5 rejected;
    r4's only review is superseded. Findings: 7 (r1 two), on 6 studies.
    """
    at = [MONDAY + timedelta(hours=i) for i in range(1, 11)]
    findings = {1: [finding(0.9, (0, 0, 0)), finding(0.6, (80, 0, 0))], 2: [finding(0.8, (10, 10, 10))],
                3: [finding(0.7, (-40, 0, 0))], 4: [finding(0.65, (5, 5, 5))], 5: [finding(0.55, (0, 60, 0))],
                9: [finding(0.5, (0, 0, 90))]}
    reports = {1: "positive", 2: "positive", 3: "positive", 4: "positive", 5: "negative", 6: "positive",
               7: "negative", 8: "negative", 9: "uncertain"}
    runs = {}
    for i in range(1, 11):
        runs[i] = site.run(findings.get(i, []), at[i - 1], latency_s=10.0 * i)
        if i in reports:
            site.report(runs[i][1], {"lung_nodule": reports[i]})
    site.feedback(*runs[1], [{"verdict": V.CONFIRMED, "finding_index": 0},
                             {"verdict": V.REJECTED, "finding_index": 1}])
    site.feedback(*runs[2], [{"verdict": V.EDITED, "finding_index": 0, "centre_mm": [13, 10, 10],
                              "diameter_mm": 8.0}])
    site.feedback(*runs[3], [{"verdict": V.CONFIRMED, "finding_index": 0},
                             {"verdict": V.MISSED, "centre_mm": [40, 40, 40], "diameter_mm": 6.0}])
    site.feedback(*runs[5], [{"verdict": V.REJECTED, "finding_index": 0}])
    site.feedback(*runs[4], [{"verdict": V.REJECTED, "finding_index": 0}], current=False)
    # what must not count: r1's study read before (version 1, superseded by r1), a failed run, an older report of r6
    site.run([finding(0.99)], at[0] - timedelta(minutes=30), study=(runs[1][1], "x"), run_version=0)
    site.run([finding(0.99)], at[2], status=RunStatus.FAILED)
    site.report(runs[6][1], {"lung_nodule": "negative"}, current=False)


def test_figures_of_a_week_are_the_hand_counted_ones(engine: Engine, site: Site) -> None:
    ten_studies(site)
    [f] = compute_figures(engine, MONDAY, WEEK_END, PeriodKind.WEEK)
    assert (f.model_name, f.model_version, f.period.label) == ("ctnode-chest", "0.2.0", "2024-W18")
    assert f.studies == 10 and f.findings == 7 and f.findings_per_study == pytest.approx(0.7)
    assert (f.flagged.successes, f.flagged.n) == (6, 10)
    assert f.flagged.ci95 == pytest.approx((0.3127, 0.8318), abs=5e-5)
    assert (f.acceptance.successes, f.acceptance.n) == (3, 5)  # confirmed 2 + edited 1 of 5 decided (r4's superseded)
    assert f.acceptance.ci95 == pytest.approx((0.2307, 0.8824), abs=5e-5)
    [s] = f.study_level
    assert (s.finding_type, s.tp, s.fp, s.tn, s.fn, s.uncertain, s.unlabelled) == ("lung_nodule", 4, 1, 2, 1, 1, 1)
    assert s.sensitivity.value == pytest.approx(0.8) and s.sensitivity.ci95 == pytest.approx((0.3755, 0.9638), abs=5e-5)
    assert s.specificity.value == pytest.approx(2 / 3)
    assert s.specificity.ci95 == pytest.approx((0.2077, 0.9385), abs=5e-5)
    assert (s.ppv.successes, s.ppv.n, s.npv.successes, s.npv.n) == (4, 5, 2, 3)
    assert f.latency_median_s == pytest.approx(55.0) and f.latency_p95_s == pytest.approx(95.5)


def test_lesion_level_figures_come_from_the_evaluator_on_the_reviewed_studies(engine: Engine, site: Site) -> None:
    ten_studies(site)
    [f] = compute_figures(engine, MONDAY, WEEK_END, PeriodKind.ALL)
    lesion = f.lesion_level
    assert lesion is not None
    # 4 reviewed studies (r1, r2, r3, r5); truth: r1's confirmed, r2's edited, r3's confirmed and missed lesions
    assert (lesion.studies, lesion.lesions) == (4, 4) and lesion.threshold == pytest.approx(0.4845)
    # at the operating point 3 of 4 hit, 2 false positives (r1's rejected 0.6, r5's 0.55) over 4 studies;
    # above 0.6 none is false and still 3 hit: every FP rate of the CPM sees 3/4
    assert lesion.sensitivity.value == pytest.approx(0.75) and lesion.fp_per_scan.value == pytest.approx(0.5)
    assert lesion.cpm.value == pytest.approx(0.75) and lesion.cpm.ci95 is not None
    assert 0.0 <= lesion.cpm.ci95[0] <= 0.75 <= lesion.cpm.ci95[1] <= 1.0


def test_figures_split_by_period_and_model_and_filter_by_model(engine: Engine, site: Site) -> None:
    site.run([finding(0.9)], MONDAY + timedelta(hours=1))
    site.run([], MONDAY + timedelta(days=8))
    site.run([finding(0.7, label="hyperdense_lesion")], MONDAY + timedelta(days=1), model="ctnode-head",
             name="ctnode-head")
    site.run([], MONDAY + timedelta(days=30))  # outside the window
    figures = compute_figures(engine, MONDAY, MONDAY + timedelta(days=14), PeriodKind.WEEK)
    assert [(f.model_name, f.period.label, f.studies) for f in figures] == [
        ("ctnode-chest", "2024-W18", 1), ("ctnode-chest", "2024-W19", 1), ("ctnode-head", "2024-W18", 1)]
    head = figures[-1]
    assert [s.finding_type for s in head.study_level] == ["hyperdense_lesion"] and head.study_level[0].unlabelled == 1
    assert head.lesion_level is None and head.acceptance.n == 0
    only = compute_figures(engine, MONDAY, MONDAY + timedelta(days=14), PeriodKind.ALL, model_name="ctnode-head")
    assert [(f.model_name, f.studies) for f in only] == [("ctnode-head", 1)]
    assert compute_figures(engine, MONDAY + timedelta(days=60), MONDAY + timedelta(days=61), PeriodKind.DAY) == []
