"""The study-level triage decision of one read: suspected positive, negative or not analysed, with its reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from detector.findings import Finding
from detector.registry.card import ModelCard


class Decision(StrEnum):
    """What a run says of its study, for the worklist."""

    SUSPECTED_POSITIVE = "suspected_positive"  # at least one urgent finding (the card's urgency rule)
    NEGATIVE = "negative"  # read, and no urgent finding (non-urgent findings may still be reported)
    NOT_ANALYSED = "not_analysed"  # not read: refused by the domain gate, or failed for good


@dataclass(frozen=True)
class StudyDecision:
    """A decision, why, and the indices (into the run's findings) of the urgent findings."""

    decision: Decision
    reason: str
    urgent: tuple[int, ...] = ()


def largest_extent_mm(finding: Finding) -> float:
    """A finding's size for the urgency rule: its largest extent along any axis, in millimetres."""
    return max(finding.size_mm)


def decide(card: ModelCard, findings: Sequence[Finding]) -> StudyDecision:
    """The decision for a study the model read and reported ``findings`` of (best first)."""
    if card.urgency is None:
        return StudyDecision(Decision.NEGATIVE, f"model {card.name} {card.version} names no urgent finding")
    rules = {c.label: c.min_size_mm for c in card.urgency.classes}
    urgent = tuple(n for n, f in enumerate(findings)
                   if f.label in rules and f.score >= card.urgency.threshold and largest_extent_mm(f) >= rules[f.label])
    if urgent:
        best = findings[urgent[0]]
        return StudyDecision(Decision.SUSPECTED_POSITIVE,
                             f"{len(urgent)} urgent finding(s); first {best.label} score {best.score:.2f}, "
                             f"{largest_extent_mm(best):.0f} mm", urgent)
    rule = ", ".join(f"{label} >= {size:g} mm" for label, size in rules.items())
    return StudyDecision(Decision.NEGATIVE, f"no urgent finding ({len(findings)} reported; urgent: {rule} at score "
                                            f">= {card.urgency.threshold:g})")


def not_analysed(reason: str) -> StudyDecision:
    """The decision for a study the model did not read, and why."""
    return StudyDecision(Decision.NOT_ANALYSED, reason)
