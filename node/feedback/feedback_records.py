"""Read side of feedback: the list an auditor scans and one review's verdicts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from node.db.schema import Feedback, Run

SUMMARY = ("id", "run_id", "study_instance_uid", "sop_instance_uid", "reader", "reader_id", "content_at",
           "received_at", "current", "superseded_by_id", "confirmed", "rejected", "edited", "missed")


def _summary(feedback: Feedback) -> dict[str, Any]:
    return {key: getattr(feedback, key) for key in SUMMARY}


def list_feedback(engine: Engine, run_id: int | None = None, study_instance_uid: str | None = None,
                  include_superseded: bool = False, limit: int = 200) -> list[dict[str, Any]]:
    """Reviews, newest first; only the current ones unless ``include_superseded``."""
    query = select(Feedback).order_by(Feedback.id.desc()).limit(limit)
    if run_id is not None:
        query = query.where(Feedback.run_id == run_id)
    if study_instance_uid is not None:
        query = query.where(Feedback.study_instance_uid == study_instance_uid)
    if not include_superseded:
        query = query.where(Feedback.current)
    with Session(engine) as session:
        return [_summary(f) for f in session.scalars(query)]


def feedback_record(engine: Engine, feedback_id: int) -> dict[str, Any] | None:
    """One review with its verdicts (each naming the run's finding it judged), or None when there is none."""
    with Session(engine) as session:
        feedback = session.get(Feedback, feedback_id)
        if feedback is None:
            return None
        run = session.get(Run, feedback.run_id)
        findings = (run.findings or []) if run is not None else []
        items = []
        for item in feedback.items:
            finding = findings[item.finding_index] if item.finding_index is not None and item.finding_index < len(findings) else None
            items.append({"verdict": item.verdict, "finding": None if item.finding_index is None else item.finding_index + 1,
                          "finding_label": finding["label"] if finding else None,
                          "finding_score": finding["score"] if finding else None,
                          "matched_by": item.matched_by, "label": item.label, "centre_mm": item.centre_mm,
                          "diameter_mm": item.diameter_mm, "regions": item.regions})
        return {**_summary(feedback), "model": run.model if run else None,
                "model_version": run.model_version if run else None, "items": items}
