"""What the figures are computed from: the done runs of a window with their current feedback and report labels."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, select

from node.db.schema import Feedback, FeedbackItem, ReportLabel, Run, StudyReport
from node.events import ReportLabelValue, RunStatus

_LABEL_ORDER = {ReportLabelValue.POSITIVE: 2, ReportLabelValue.UNCERTAIN: 1, ReportLabelValue.NEGATIVE: 0}


@dataclass(frozen=True)
class Verdict:
    """One item of a reader's feedback: on finding ``finding_index`` of the run, or a missed lesion (None)."""

    verdict: str
    finding_index: int | None
    centre_mm: tuple[float, float, float] | None
    diameter_mm: float | None
    label: str | None


@dataclass(frozen=True)
class Review:
    """One reader's current feedback on a run."""

    feedback_id: int
    received_at: datetime
    verdicts: tuple[Verdict, ...]


@dataclass(frozen=True, eq=False)
class ReadRun:
    """A done run as the figures see it: its findings, what it read, its reviews and its study's report labels."""

    id: int
    study_id: int
    model: str
    model_name: str
    model_version: str
    findings: list[dict[str, Any]]
    input_facts: dict[str, Any]
    last_instance_at: datetime | None
    finished_at: datetime
    reviews: tuple[Review, ...] = ()
    report: dict[str, str] = field(default_factory=dict)
    """The current report's value per finding type (several labels of one type: positive over uncertain over
    negative)."""

    @property
    def identity(self) -> tuple[str, str]:
        return self.model_name, self.model_version

    def positive(self, finding_type: str) -> bool:
        return any(f.get("label") == finding_type for f in self.findings)

    @property
    def latest_review(self) -> Review | None:
        """The newest current review (one reader's lesions are the truth of the lesion-level figures)."""
        return max(self.reviews, key=lambda r: (r.received_at, r.feedback_id), default=None)


def _done_runs(since: datetime, until: datetime, model_name: str | None) -> Select[Any]:
    stmt = select(Run).where(Run.status == str(RunStatus.DONE), Run.finished_at >= since, Run.finished_at < until,
                             Run.model_name.is_not(None))
    return stmt.where(Run.model_name == model_name) if model_name else stmt


def load_runs(engine: Engine, since: datetime, until: datetime, model_name: str | None = None) -> list[ReadRun]:
    """The done runs that finished in [since, until) (of ``model_name`` only, when given): per study and model
    identity (name and version) the newest run only, a study read twice counting once; in finishing order."""
    window = _done_runs(since, until, model_name)
    ids = window.with_only_columns(Run.id).scalar_subquery()
    studies = window.with_only_columns(Run.study_id).scalar_subquery()
    with engine.connect() as conn:
        rows = conn.execute(window.with_only_columns(
            Run.id, Run.study_id, Run.model, Run.model_name, Run.model_version, Run.version, Run.findings,
            Run.input_facts, Run.last_instance_at, Run.finished_at)).all()
        items = conn.execute(
            select(Feedback.id, Feedback.run_id, Feedback.received_at, FeedbackItem.verdict,
                   FeedbackItem.finding_index, FeedbackItem.centre_mm, FeedbackItem.diameter_mm, FeedbackItem.label)
            .join(FeedbackItem, FeedbackItem.feedback_id == Feedback.id, isouter=True)
            .where(Feedback.current.is_(True), Feedback.run_id.in_(ids))
            .order_by(Feedback.id, FeedbackItem.id)).all()
        labels = conn.execute(
            select(StudyReport.study_id, StudyReport.received_at, StudyReport.id, ReportLabel.finding_type,
                   ReportLabel.value)
            .join(ReportLabel, ReportLabel.report_id == StudyReport.id)
            .where(StudyReport.current.is_(True), StudyReport.study_id.in_(studies))).all()
    newest: dict[tuple[int, str, str], Any] = {}
    for row in rows:
        key = (row.study_id, row.model_name, row.model_version or "")
        if key not in newest or row.version > newest[key].version:
            newest[key] = row
    reviews: dict[int, dict[int, tuple[datetime, list[Verdict]]]] = defaultdict(dict)
    for item in items:
        _, verdicts = reviews[item.run_id].setdefault(item.id, (item.received_at, []))
        if item.verdict is not None:
            centre = (float(item.centre_mm[0]), float(item.centre_mm[1]), float(item.centre_mm[2])) \
                if item.centre_mm else None
            verdicts.append(Verdict(item.verdict, item.finding_index, centre, item.diameter_mm, item.label))
    reports = _report_values(labels)
    out = [ReadRun(
        id=row.id, study_id=row.study_id, model=row.model, model_name=row.model_name,
        model_version=row.model_version or "", findings=list(row.findings or []),
        input_facts=dict(row.input_facts or {}),
        last_instance_at=row.last_instance_at, finished_at=row.finished_at,
        reviews=tuple(Review(fid, at, tuple(v)) for fid, (at, v) in sorted(reviews.get(row.id, {}).items())),
        report=reports.get(row.study_id, {})) for row in newest.values()]
    return sorted(out, key=lambda r: (r.finished_at, r.id))


def _report_values(labels: list[Any]) -> dict[int, dict[str, str]]:
    """Per study, the newest current report's value per finding type."""
    newest: dict[int, tuple[datetime, int]] = {}
    for row in labels:
        stamp = (row.received_at, row.id)
        if row.study_id not in newest or stamp > newest[row.study_id]:
            newest[row.study_id] = stamp
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for row in labels:
        if (row.received_at, row.id) != newest[row.study_id]:
            continue
        values = out[row.study_id]
        value, known = ReportLabelValue(row.value), values.get(row.finding_type)
        if known is None or _LABEL_ORDER[value] > _LABEL_ORDER[ReportLabelValue(known)]:
            values[row.finding_type] = str(value)
    return dict(out)
