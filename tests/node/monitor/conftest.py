"""Fixtures for monitoring: a migrated database and a site that adds studies, runs, feedback and reports as rows."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, insert

from node.db.schema import Feedback, FeedbackItem, Instance, ReportLabel, Run, Series, Study, StudyReport
from node.events import FeedbackVerdict, ReportSource, RunStatus

MONDAY = datetime(2024, 4, 29, tzinfo=timezone.utc)  # ISO week 2024-W18
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"


def finding(score: float, centre: Sequence[float] = (0.0, 0.0, 0.0), size_mm: float = 10.0,
            label: str = "lung_nodule") -> dict[str, Any]:
    """A finding as a run stores it (the keys the monitor reads)."""
    return {"label": label, "score": score, "centre_mm": list(centre), "size_mm": [size_mm, size_mm, size_mm]}


class Site:
    """Adds rows as the node's stages would leave them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._n = itertools.count(1)

    def study(self) -> tuple[int, str]:
        uid = generate_uid()
        with self.engine.begin() as conn:
            study_id = conn.execute(insert(Study).returning(Study.id).values(study_instance_uid=uid)).scalar_one()
        return study_id, uid

    def run(self, findings: list[dict[str, Any]], finished_at: datetime, *, model: str = "ctnode-chest",
            name: str = "ctnode-chest", version: str = "0.2.0", latency_s: float | None = 30.0,
            study: tuple[int, str] | None = None, run_version: int = 1, status: RunStatus = RunStatus.DONE,
            facts: dict[str, Any] | None = None) -> tuple[int, int]:
        """A run of a (new, unless given) study; returns (run id, study id)."""
        study_id, uid = study or self.study()
        last = None if latency_s is None else finished_at - timedelta(seconds=latency_s)
        with self.engine.begin() as conn:
            run_id = conn.execute(insert(Run).returning(Run.id).values(
                study_id=study_id, study_instance_uid=uid, model=model, version=run_version, status=str(status),
                trigger="test", input_digest="0" * 64, instance_count=1, model_name=name, model_version=version,
                findings=findings, input_facts=facts or {}, last_instance_at=last, finished_at=finished_at,
                ready_at=finished_at)).scalar_one()
        return run_id, study_id

    def feedback(self, run_id: int, study_id: int, verdicts: list[dict[str, Any]], *, reader: str = "Dr A",
                 current: bool = True, received_at: datetime | None = None) -> int:
        """A reader's feedback on a run: each verdict a dict of FeedbackItem columns (verdict as a FeedbackVerdict)."""
        with self.engine.begin() as conn:
            series_id = conn.execute(insert(Series).returning(Series.id).values(
                study_id=study_id, series_instance_uid=generate_uid(), modality="SR")).scalar_one()
            sop = generate_uid()
            instance_id = conn.execute(insert(Instance).returning(Instance.id).values(
                series_id=series_id, sop_instance_uid=sop, sop_class_uid=ENHANCED_SR,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                sha256=f"{next(self._n):064d}", size_bytes=1, path="sr.dcm")).scalar_one()
            counts = {str(v): sum(1 for d in verdicts if d["verdict"] == v) for v in FeedbackVerdict}
            feedback_id = conn.execute(insert(Feedback).returning(Feedback.id).values(
                run_id=run_id, study_id=study_id, study_instance_uid="1.2.3", instance_id=instance_id,
                sop_instance_uid=sop, reader=reader, current=current,
                received_at=received_at or datetime.now(timezone.utc), **counts)).scalar_one()
            for d in verdicts:
                item = {**d, "verdict": str(d["verdict"])}
                conn.execute(insert(FeedbackItem).values(feedback_id=feedback_id, **item))
        return feedback_id

    def report(self, study_id: int, labels: dict[str, str], *, current: bool = True,
               received_at: datetime | None = None) -> int:
        """A report of a study with one label per finding type (value as a ReportLabelValue string)."""
        with self.engine.begin() as conn:
            report_id = conn.execute(insert(StudyReport).returning(StudyReport.id).values(
                study_id=study_id, source=str(ReportSource.HL7), text="report", current=current,
                received_at=received_at or datetime.now(timezone.utc))).scalar_one()
            for finding_type, value in labels.items():
                conn.execute(insert(ReportLabel).values(report_id=report_id, finding_type=finding_type, value=value,
                                                        span_start=0, span_end=6, evidence="report", rule="test"))
        return report_id


@pytest.fixture
def site(engine: Engine) -> Site:
    return Site(engine)
