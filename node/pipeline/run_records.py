"""Read side of runs: the list an operator scans and the whole audit record of one run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from node.db.schema import AuditEvent, Delivery, Feedback, Instance, Notification, Run, RunInput, RunOutput, Series
from node.events import OutputKind

STAGES = ("first_instance_at", "last_instance_at", "ready_at", "claimed_at", "inference_started_at",
          "inference_ended_at", "reports_built_at", "finished_at")
"""The per-stage timestamps of a run, in the order the stages happen."""

SUMMARY = ("id", "study_instance_uid", "model", "mode", "version", "status", "attempts", "instance_count",
           "series_instance_uid", "model_name", "model_version", "predecessor_id", "worker", "error", "trigger")


def _summary(run: Run) -> dict[str, Any]:
    return {**{key: getattr(run, key) for key in SUMMARY}, "findings": len(run.findings or []),
            "ready_at": run.ready_at, "finished_at": run.finished_at}


def list_runs(engine: Engine, status: str | None = None, study_instance_uid: str | None = None,
              limit: int = 200, mode: str | None = None) -> list[dict[str, Any]]:
    """Runs, newest first, optionally of one status, study and/or mode."""
    query = select(Run).order_by(Run.id.desc()).limit(limit)
    if mode is not None:
        query = query.where(Run.mode == mode)
    if status is not None:
        query = query.where(Run.status == status)
    if study_instance_uid is not None:
        query = query.where(Run.study_instance_uid == study_instance_uid)
    with Session(engine) as session:
        return [_summary(run) for run in session.scalars(query)]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start is not None and end is not None else None


def run_record(engine: Engine, run_id: int) -> dict[str, Any] | None:
    """Everything the audit holds about one run, or None when there is no such run.

    Inputs with their digests, the model's identity, routing and selection reasons, findings, outputs,
    each output's deliveries and acknowledgements, the triage decision and its notifications, the readers' reviews (feedback), the per-stage timestamps and durations, and the
    audit events that name the run.
    """
    with Session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            return None
        inputs = session.execute(
            select(Instance.sop_instance_uid, Instance.sha256, Series.series_instance_uid, Instance.received_at)
            .join(RunInput, RunInput.instance_id == Instance.id).join(Series, Instance.series_id == Series.id)
            .where(RunInput.run_id == run_id).order_by(Instance.id)).all()
        outputs = session.scalars(select(RunOutput).where(RunOutput.run_id == run_id).order_by(RunOutput.id)).all()
        deliveries = session.scalars(select(Delivery).where(Delivery.run_id == run_id).order_by(Delivery.id)).all()
        told = session.scalars(select(Notification).where(Notification.run_id == run_id)
                               .order_by(Notification.id)).all()
        reviews = session.scalars(select(Feedback).where(Feedback.run_id == run_id).order_by(Feedback.id)).all()
        events = session.scalars(select(AuditEvent).where(AuditEvent.study_instance_uid == run.study_instance_uid)
                                 .order_by(AuditEvent.id)).all()
        stamps = {stage: getattr(run, stage) for stage in STAGES}
        sr_acks = [d.acknowledged_at for d in deliveries if d.acknowledged_at is not None
                   and any(o.kind == OutputKind.SR and o.sop_instance_uid == d.sop_instance_uid for o in outputs)]
        first_sr_ack = min(sr_acks, default=None)
        return {
            **_summary(run),
            "input_digest": run.input_digest,
            "weights_sha256": run.weights_sha256,
            "routing": run.routing,
            "selection": run.selection,
            "findings": run.findings,
            "context": run.context,
            "decision": run.decision,
            "decision_reason": run.decision_reason,
            "notifications": [{"id": n.id, "channel": n.channel, "kind": n.kind, "decision": n.decision,
                               "revision": n.revision, "state": n.state, "attempts": n.attempts,
                               "last_error": n.last_error, "acknowledged_at": n.acknowledged_at,
                               "notify_s": n.notify_s} for n in told],
            "inputs": [{"sop_instance_uid": i.sop_instance_uid, "sha256": i.sha256,
                        "series_instance_uid": i.series_instance_uid, "received_at": i.received_at} for i in inputs],
            "outputs": [{"kind": o.kind, "sop_class_uid": o.sop_class_uid, "sop_instance_uid": o.sop_instance_uid,
                         "series_instance_uid": o.series_instance_uid, "sha256": o.sha256, "path": o.path}
                        for o in outputs],
            "deliveries": [{"id": d.id, "destination": d.destination, "sop_instance_uid": d.sop_instance_uid,
                            "state": d.state, "attempts": d.attempts, "last_status": d.last_status,
                            "acknowledged_at": d.acknowledged_at} for d in deliveries],
            "feedback": [{"id": f.id, "reader": f.reader, "received_at": f.received_at, "current": f.current,
                          "confirmed": f.confirmed, "rejected": f.rejected, "edited": f.edited, "missed": f.missed}
                         for f in reviews],
            "timestamps": {**stamps, "first_sr_acknowledged_at": first_sr_ack},
            "durations_s": {
                "stabilize": _seconds(run.last_instance_at, run.ready_at),
                "queue": _seconds(run.ready_at, run.claimed_at),
                "inference": _seconds(run.inference_started_at, run.inference_ended_at),
                "report": _seconds(run.inference_ended_at, run.reports_built_at),
                "delivery": _seconds(run.reports_built_at, first_sr_ack),
                "turnaround": _seconds(run.last_instance_at, first_sr_ack),
            },
            "audit": [{"at": e.at, "kind": e.kind, "detail": e.detail} for e in events
                      if (e.detail or {}).get("run_id") == run_id],
        }
