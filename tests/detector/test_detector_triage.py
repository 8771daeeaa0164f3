"""The study-level triage decision: the card's urgency rule (class, score, size), its validation, and the shipped
cards' rules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from detector.findings import Code, Finding
from detector.registry import ModelCardError, Urgency, UrgentClass, card_from_dict, card_to_dict, load_card
from detector.triage import Decision, decide, not_analysed

MODELS = Path(__file__).resolve().parents[2] / "detector" / "registry" / "models"
HEAD = load_card(MODELS / "ctnode-head.json")
CHEST = load_card(MODELS / "ctnode-chest.json")


def _finding(label: str, score: float, size: float) -> Finding:
    return Finding(label=label, finding_type=Code("1", "SCT", "x"), score=score, centre_mm=(0.0, 0.0, 0.0),
                   size_mm=(size, size / 2, size / 3), voxel_box=(0, 0, 0, 1, 1, 1), slices=())


def test_an_urgent_class_above_the_urgency_threshold_makes_the_study_suspected_positive() -> None:
    findings = [_finding("hyperdense_lesion", 0.45, 20.0), _finding("hyperdense_lesion", 0.81, 14.0)]
    result = decide(HEAD, findings)
    assert result.decision is Decision.SUSPECTED_POSITIVE and result.urgent == (1,)
    assert "score 0.81" in result.reason and "14 mm" in result.reason


def test_a_reported_finding_below_the_urgency_threshold_is_not_urgent() -> None:
    result = decide(HEAD, [_finding("hyperdense_lesion", 0.49, 20.0)])
    assert result.decision is Decision.NEGATIVE and result.urgent == ()
    assert "1 reported" in result.reason


def test_the_chest_rule_needs_a_mass_of_30_mm() -> None:
    assert decide(CHEST, [_finding("lung_nodule", 0.9, 12.0)]).decision is Decision.NEGATIVE
    assert decide(CHEST, [_finding("lung_nodule", 0.9, 31.0)]).decision is Decision.SUSPECTED_POSITIVE
    assert decide(CHEST, []).decision is Decision.NEGATIVE


def test_a_card_without_urgency_flags_nothing_and_not_analysed_keeps_its_reason() -> None:
    assert decide(replace(HEAD, urgency=None), [_finding("hyperdense_lesion", 0.99, 50.0)]).decision is Decision.NEGATIVE
    gone = not_analysed("refused by the model's domain gate: contrast")
    assert gone.decision is Decision.NOT_ANALYSED and gone.reason.endswith("contrast")


def test_the_urgency_rule_round_trips_and_is_validated() -> None:
    assert card_from_dict(card_to_dict(HEAD)).urgency == HEAD.urgency
    data = card_to_dict(HEAD)
    data["urgency"]["threshold"] = 0.2  # below the operating threshold: an urgent finding that is not reported
    with pytest.raises(ModelCardError, match="below the operating threshold"):
        card_from_dict(data)
    data["urgency"] = {"threshold": 0.6, "classes": [{"label": "lung_nodule"}]}
    with pytest.raises(ModelCardError, match="urgency names class 'lung_nodule'"):
        card_from_dict(data)
    with pytest.raises(ModelCardError, match="min_size_mm"):
        Urgency(0.6, (UrgentClass("hyperdense_lesion", -1.0),))
