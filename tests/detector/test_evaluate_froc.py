"""FROC, CPM and matching against hand-computed cases: ties, ignore regions, lesion-free studies, no detections."""

from __future__ import annotations

import numpy as np
import pytest

from detector.evaluate import (
    Froc,
    ImagePlane,
    LesionOutline,
    LesionRecord,
    candidates_curve,
    classify,
)
from detector.labels.lesions import box_polygon


def lesion(x: float, diameter: float, ignore: bool = False) -> LesionRecord:
    return LesionRecord(centre_mm=(x, 0.0, 0.0), diameter_mm=diameter, label="nodule", source="test", ignore=ignore)


THRESHOLDS = (0.5, 0.75, 0.8, 0.85)


def two_studies() -> Froc:
    """Study a: one 10 mm target at x=0 hit at 0.8 (a second hit at 0.78 is not a false positive), a false
    positive at 0.7, a detection at 0.95 on a 2 mm ignore region. Study b: lesion-free, detections 0.6 and 0.8."""
    a = candidates_curve("a", [((0, 0, 0), 0.8), ((3, 0, 0), 0.78), ((50, 0, 0), 0.7), ((100, 0, 0), 0.95)],
                         [lesion(0, 10), lesion(100, 2, ignore=True)], THRESHOLDS)
    b = candidates_curve("b", [((0, 0, 0), 0.6), ((10, 0, 0), 0.8)], [], THRESHOLDS)
    return Froc(THRESHOLDS, [a, b])


def test_curve_counts_hits_false_positives_ignores_and_ties() -> None:
    fps, sens = two_studies().curve()
    # t=0.5: FPs a:1 (0.7), b:2 -> 1.5/scan; t=0.75: b's 0.8 -> 0.5; t=0.8: the tie at 0.8 counts both -> 0.5; t=0.85: 0
    assert fps.tolist() == [1.5, 0.5, 0.5, 0.0]
    assert sens.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_cpm_is_the_mean_sensitivity_at_the_seven_rates() -> None:
    froc = two_studies()
    # 1/8 and 1/4 FP/scan: only t=0.85 qualifies (sensitivity 0); from 1/2 on, t=0.75 (sensitivity 1).
    assert froc.sensitivity_at_rates().tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert froc.cpm() == pytest.approx(5 / 7)
    assert froc.threshold_at(0.5) == 0.75
    assert froc.threshold_at(0.1) == 0.85


def test_study_without_detections_misses_its_lesions_and_adds_no_false_positive() -> None:
    a = candidates_curve("a", [((0, 0, 0), 0.9)], [lesion(0, 6)], THRESHOLDS)
    empty = candidates_curve("empty", [], [lesion(0, 6)], THRESHOLDS)
    froc = Froc(THRESHOLDS, [a, empty])
    fps, sens = froc.curve()
    assert sens.tolist() == [0.5] * 4
    assert fps.tolist() == [0.0] * 4
    assert froc.lesions == 2


def test_only_lesion_free_studies_have_no_sensitivity() -> None:
    froc = Froc(THRESHOLDS, [candidates_curve("n", [((0, 0, 0), 0.9)], [], THRESHOLDS)])
    fps, sens = froc.curve()
    assert fps.tolist() == [1.0] * 4
    assert np.isnan(sens).all()


def test_hit_radius_is_at_least_2_mm_and_an_outline_counts() -> None:
    tiny = lesion(0, 1.0)
    assert tiny.hit_by((1.9, 0, 0)) and not tiny.hit_by((2.1, 0, 0))
    plane = ImagePlane("1.2.3", np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (1.0, 1.0), 2.0)
    long = LesionRecord((0.0, 0.0, 0.0), 4.0, "tumour", "test",
                        outlines=(LesionOutline(plane, box_polygon(-0.5, -0.5, 20.5, 3.5)),))
    assert long.hit_by((18.0, 1.0, 0.9))  # 18 mm from the centre, inside the outline, within half the thickness
    assert not long.hit_by((18.0, 1.0, 1.1))  # beyond half the image thickness
    assert not long.hit_by((18.0, 5.0, 0.0))


def test_a_centre_on_a_target_and_an_ignore_region_is_a_hit() -> None:
    outcome = classify((0, 0, 0), [lesion(0, 10)], [lesion(1, 4, ignore=True)])
    assert outcome.hits == (0,) and not outcome.false_positive
    ignored = classify((30, 0, 0), [lesion(0, 10)], [lesion(30, 4, ignore=True)])
    assert ignored.ignored and not ignored.false_positive


def test_summary_intervals_bracket_the_estimates() -> None:
    froc = two_studies()
    summary = froc.summary(0.75, rounds=500)
    assert summary["sensitivity"].value == 1.0
    assert summary["fp_per_scan"].value == 0.5
    assert summary["cpm"].value == pytest.approx(5 / 7)
    for interval in summary.values():
        low, high = interval.ci95
        assert low <= interval.value + 1e-9 and interval.value <= high + 1e-9
    assert summary["fp_per_scan"].ci95 == (0.0, 1.0)
    assert not any(k.startswith("sensitivity 5-10 mm") for k in summary) and "sensitivity 10-20 mm (1)" in summary


def test_thresholds_must_match_the_curves() -> None:
    with pytest.raises(ValueError, match="does not match"):
        Froc((0.5, 0.6), [candidates_curve("a", [], [], THRESHOLDS)])


def test_saturated_thresholds_count_as_unbounded_false_positives() -> None:
    from detector.evaluate.froc import study_curve

    curve = study_curve("s", [None, [((0, 0, 0), 0.8)], []], [lesion(0, 10)])
    assert curve.hit[:, 0].tolist() == [True, True, False]
    froc = Froc((0.5, 0.8, 0.9), [curve, candidates_curve("n", [], [], (0.5, 0.8, 0.9))])
    fps, sens = froc.curve()
    assert fps.tolist() == [float("inf"), 0.0, 0.0]
    assert froc.sensitivity_at_rates().tolist() == [1.0] * 7
    assert froc.summary(0.8, rounds=200)["fp_per_scan"].ci95 == (0.0, 0.0)


def test_paired_bootstrap_weights_compare_two_models_on_the_same_studies() -> None:
    better, worse = two_studies(), Froc(THRESHOLDS, [
        candidates_curve("a", [((50, 0, 0), 0.9)], [lesion(0, 10)], THRESHOLDS),
        candidates_curve("b", [], [], THRESHOLDS)])
    weights = better.study_weights(300, seed=1)
    assert weights.shape == (300, 2) and (weights.sum(axis=1) == 2).all()
    difference = better.cpm_of(weights) - worse.cpm_of(weights)
    assert worse.cpm() == 0.0 and better.cpm_of(np.ones((1, 2)))[0] == pytest.approx(better.cpm())
    assert np.nanmin(difference) >= 0.0
