"""Real-world figures per model and period: volume, flagged share, acceptance, study-level accuracy against the
reports, lesion-level FROC/CPM on reviewed studies (the evaluator of `ctnode evaluate`), time to result."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from detector.labels.lesions import MIN_TARGET_DIAMETER_MM, LesionRecord
from node.events import FeedbackVerdict, ReportLabelValue
from node.monitor.done_runs import ReadRun, load_runs
from node.monitor.periods import Period, PeriodKind, periods_between
from node.monitor.stats import Proportion, quantile

if TYPE_CHECKING:  # the evaluator and the model registry import torch: only the functions that use them load them
    from detector.evaluate.froc import Interval

BOOTSTRAP_ROUNDS = 1000
"""Rounds of the lesion-level bootstrap (studies resampled with replacement), as the evaluator draws them."""
ACCEPTED = (FeedbackVerdict.CONFIRMED, FeedbackVerdict.EDITED)


@dataclass(frozen=True)
class CardFacts:
    """What the figures need of a model card: its finding types and its operating threshold."""

    finding_types: tuple[str, ...]
    operating_threshold: float | None
    body_part: str


@lru_cache(maxsize=64)
def card_facts(model: str) -> CardFacts | None:
    """The routed model's card facts (a shipped name or a card path); None when the card is gone or unreadable."""
    from detector.infer.models import card_path
    from detector.registry import ModelCardError, load_card

    try:
        card = load_card(card_path(model))
    except (LookupError, ModelCardError, OSError):
        return None
    return CardFacts(tuple(c.label for c in card.classes), card.operating_threshold, card.body_part)


@dataclass(frozen=True)
class StudyLevel:
    """One finding type's run calls against the report labels (a run is positive with any finding of that type).

    ``uncertain``: studies whose report is uncertain, left out; ``unlabelled``: studies with no report label."""

    finding_type: str
    tp: int
    fp: int
    tn: int
    fn: int
    uncertain: int
    unlabelled: int

    @property
    def sensitivity(self) -> Proportion:
        return Proportion(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> Proportion:
        return Proportion(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> Proportion:
        return Proportion(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> Proportion:
        return Proportion(self.tn, self.tn + self.fn)

    @property
    def discordance(self) -> Proportion:
        """Studies where the run's call and the report disagree, of those the report decides."""
        return Proportion(self.fp + self.fn, self.tp + self.fp + self.tn + self.fn)

    def as_dict(self) -> dict[str, Any]:
        counts = {k: getattr(self, k) for k in ("tp", "fp", "tn", "fn", "uncertain", "unlabelled")}
        return {"finding_type": self.finding_type, **counts,
                **{k: getattr(self, k).as_dict() for k in ("sensitivity", "specificity", "ppv", "npv")}}


@dataclass(frozen=True)
class LesionLevel:
    """FROC figures over the reviewed studies (truth: the reader's confirmed, edited and missed lesions)."""

    studies: int
    lesions: int
    threshold: float
    cpm: Interval
    sensitivity: Interval
    fp_per_scan: Interval

    def as_dict(self) -> dict[str, Any]:
        def interval(i: Interval) -> dict[str, Any]:
            return {"value": i.value, "ci95": list(i.ci95) if i.ci95 else None}

        return {"studies": self.studies, "lesions": self.lesions, "threshold": self.threshold,
                "cpm": interval(self.cpm), "sensitivity": interval(self.sensitivity),
                "fp_per_scan": interval(self.fp_per_scan)}


@dataclass(frozen=True)
class Figures:
    """One model identity in one period."""

    model_name: str
    model_version: str
    period: Period
    studies: int
    flagged: Proportion
    findings: int
    acceptance: Proportion
    study_level: tuple[StudyLevel, ...]
    lesion_level: LesionLevel | None
    latency_median_s: float | None
    latency_p95_s: float | None

    @property
    def findings_per_study(self) -> float | None:
        return self.findings / self.studies if self.studies else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name, "model_version": self.model_version, "period": self.period.label,
            "since": self.period.start.isoformat(), "until": self.period.end.isoformat(), "studies": self.studies,
            "flagged": self.flagged.as_dict(), "findings": self.findings, "findings_per_study": self.findings_per_study,
            "acceptance": self.acceptance.as_dict(), "study_level": [s.as_dict() for s in self.study_level],
            "lesion_level": self.lesion_level.as_dict() if self.lesion_level else None,
            "latency_median_s": self.latency_median_s, "latency_p95_s": self.latency_p95_s,
        }


def acceptance(runs: Sequence[ReadRun]) -> Proportion:
    """Confirmed and edited findings over those a reader decided on (confirmed, edited, rejected), every current
    review counted."""
    decided = accepted = 0
    for run in runs:
        for review in run.reviews:
            for v in review.verdicts:
                if v.finding_index is None or v.verdict == FeedbackVerdict.MISSED:
                    continue
                decided += 1
                accepted += v.verdict in ACCEPTED
    return Proportion(accepted, decided)


def study_level(runs: Sequence[ReadRun], finding_type: str) -> StudyLevel:
    """The 2x2 table of run calls against current report labels for ``finding_type``."""
    counts = dict.fromkeys(("tp", "fp", "tn", "fn", "uncertain", "unlabelled"), 0)
    for run in runs:
        label = run.report.get(finding_type)
        if label is None:
            counts["unlabelled"] += 1
        elif label == ReportLabelValue.UNCERTAIN:
            counts["uncertain"] += 1
        else:
            truth, called = label == ReportLabelValue.POSITIVE, run.positive(finding_type)
            counts[("t" if truth == called else "f") + ("p" if called else "n")] += 1
    return StudyLevel(finding_type, **counts)


def truth_lesions(run: ReadRun) -> list[LesionRecord]:
    """The newest review's lesions as evaluator records: confirmed and edited findings (the reader's geometry where
    given, else the finding's) and the lesions the reader drew that the run missed. As in `ctnode evaluate`,
    a lesion under ``MIN_TARGET_DIAMETER_MM`` is an ignore region."""
    review = run.latest_review
    if review is None:
        return []
    lesions = []
    for n, v in enumerate(review.verdicts):
        if v.verdict == FeedbackVerdict.REJECTED:
            continue
        finding = run.findings[v.finding_index] if v.finding_index is not None and \
            0 <= v.finding_index < len(run.findings) else None
        centre = v.centre_mm or (tuple(finding["centre_mm"]) if finding else None)
        diameter = v.diameter_mm or (max(finding["size_mm"]) if finding else None)
        if centre is None or diameter is None:
            continue
        small = diameter < MIN_TARGET_DIAMETER_MM
        lesions.append(LesionRecord(
            centre_mm=tuple(float(c) for c in centre), diameter_mm=float(diameter),  # type: ignore[arg-type]
            label=v.label or (str(finding["label"]) if finding else ""),
            source=f"feedback {review.feedback_id} item {n}",
            ignore=small, reason=f"under {MIN_TARGET_DIAMETER_MM:g} mm" if small else ""))
    return lesions


def lesion_level(runs: Sequence[ReadRun], operating_threshold: float | None,
                 rounds: int = BOOTSTRAP_ROUNDS) -> LesionLevel | None:
    """FROC over the runs a reader reviewed: each run's findings are its candidates (scores kept), its newest
    review the truth; CPM, sensitivity and FP/scan at the operating threshold with bootstrap CIs over studies."""
    from detector.evaluate.froc import Froc, candidates_curve
    from detector.evaluate.run import GRID, threshold_grid

    reviewed = [run for run in runs if run.reviews]
    if not reviewed:
        return None
    threshold = round(operating_threshold, 4) if operating_threshold is not None else min(GRID)
    grid = threshold_grid(threshold)
    curves = [candidates_curve(str(run.id), [(tuple(f["centre_mm"]), float(f["score"])) for f in run.findings],
                               truth_lesions(run), grid) for run in reviewed]
    froc = Froc(grid, curves)
    summary = froc.summary(threshold, rounds=rounds)
    return LesionLevel(froc.studies, froc.lesions, threshold, summary["cpm"], summary["sensitivity"],
                       summary["fp_per_scan"])


def latencies_s(runs: Sequence[ReadRun]) -> list[float]:
    """Seconds from the study's last image to the run's result, for the runs that know both."""
    return [(run.finished_at - run.last_instance_at).total_seconds() for run in runs if run.last_instance_at]


def figures_of(runs: Sequence[ReadRun], period: Period, rounds: int = BOOTSTRAP_ROUNDS) -> Figures:
    """The figures of one model identity's runs in one period (``runs`` non-empty, all of one identity)."""
    first = runs[0]
    facts = card_facts(first.model)
    types = facts.finding_types if facts else tuple(sorted({str(f["label"]) for r in runs for f in r.findings}))
    latency = latencies_s(runs)
    return Figures(
        model_name=first.model_name, model_version=first.model_version, period=period, studies=len(runs),
        flagged=Proportion(sum(1 for r in runs if r.findings), len(runs)),
        findings=sum(len(r.findings) for r in runs), acceptance=acceptance(runs),
        study_level=tuple(study_level(runs, t) for t in types),
        lesion_level=lesion_level(runs, facts.operating_threshold if facts else None, rounds),
        latency_median_s=quantile(latency, 0.5), latency_p95_s=quantile(latency, 0.95),
    )


def by_identity_and_period(runs: Sequence[ReadRun], periods: Sequence[Period]
                           ) -> dict[tuple[str, str], dict[Period, list[ReadRun]]]:
    """Runs grouped by model identity, then by the period they finished in (every period present, maybe empty)."""
    out: dict[tuple[str, str], dict[Period, list[ReadRun]]] = defaultdict(lambda: {p: [] for p in periods})
    starts = [p.start for p in periods]
    for run in runs:
        k = bisect_right(starts, run.finished_at) - 1
        if k >= 0 and run.finished_at in periods[k]:
            out[run.identity][periods[k]].append(run)
    return dict(out)


def compute_figures(engine: Engine, since: datetime, until: datetime, kind: PeriodKind = PeriodKind.WEEK,
                    model_name: str | None = None, rounds: int = BOOTSTRAP_ROUNDS) -> list[Figures]:
    """Figures per model identity and period of [since, until), periods without studies left out."""
    periods = periods_between(since, until, kind)
    grouped = by_identity_and_period(load_runs(engine, since, until, model_name), periods)
    return [figures_of(members, period, rounds) for identity in sorted(grouped)
            for period, members in grouped[identity].items() if members]
