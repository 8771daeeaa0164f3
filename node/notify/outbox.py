"""The notification outbox: queue a finished run's result for its route's channels (original, correction or
withdrawal of what a channel was told of an earlier version), read what stands, requeue dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from node.config import NotifyChannel, Route, Settings
from node.db import audit
from node.db.schema import Notification, Run, utcnow
from node.events import AuditKind, DeliveryState, RunMode
from node.logging import get_logger
from node.notify.content import Revision, payload, result_digest, withdrawn_findings
from node.reports.uids import Part, RunUids, run_key

log = get_logger(__name__)


def channels_for(routes: Sequence[Route], model: str) -> list[str]:
    """The channels told of ``model``'s live results: those of every live route whose model it is now."""
    return list(dict.fromkeys(name for route in routes if route.model == model and route.run_mode is RunMode.LIVE
                              for name in route.notify))


def enqueue_run(engine: Engine, settings: Settings, run_id: int, channels: Sequence[str]) -> list[int]:
    """Queue the result of run ``run_id`` (its decision recorded) for each of ``channels``; returns the ids queued.

    Idempotent (one row per run and channel). A channel told of an earlier version of the study by the same
    model gets a correction when the result changed, nothing when it did not, and a withdrawal when the new
    decision is one it is not told of (a suspected positive that is now negative or not analysed). A correction
    or withdrawal carries the findings told before that it no longer has (``withdrawn_findings``), from the
    earlier notification's payload, so that a channel can withdraw them.
    """
    configured = {c.name: c for c in settings.notify.channels}
    with engine.connect() as conn:
        run = conn.execute(select(Run).where(Run.id == run_id)).one()
    if run.mode != str(RunMode.LIVE) or run.decision is None:
        return []
    uids = RunUids(settings.reports.uid_root, run_key(run.id))
    findings = list(run.findings or [])
    urgent = [n for n, f in enumerate(findings) if f.get("urgent")]
    content = payload(run, findings, [str(uids.instance(Part.FINDING, n)) for n in range(len(findings))], urgent)
    ids = []
    for name in dict.fromkeys(channels):
        channel = configured.get(name)
        if channel is not None:
            queued = _enqueue_one(engine, run, channel, content)
            if queued is not None:
                ids.append(queued)
    return ids


def _prior(engine: Engine, run: Run, channel: str) -> Notification | None:
    """The notification of the newest earlier version of the study by the same model on ``channel``."""
    with Session(engine, expire_on_commit=False) as session:
        return session.scalars(select(Notification).join(Run, Notification.run_id == Run.id)
                               .where(Notification.channel == channel, Run.study_id == run.study_id,
                                      Run.model == run.model, Run.version < run.version)
                               .order_by(Run.version.desc()).limit(1)).one_or_none()


def _enqueue_one(engine: Engine, run: Run, channel: NotifyChannel, content: dict[str, Any]) -> int | None:
    with engine.connect() as conn:
        existing = conn.execute(select(Notification.id).where(Notification.run_id == run.id,
                                                              Notification.channel == channel.name)).scalar()
    if existing is not None:
        return existing
    wanted = run.decision in channel.decisions
    prior = _prior(engine, run, channel.name)
    if prior is None:
        if not wanted:
            return None
        revision = Revision.ORIGINAL
    elif result_digest(prior.payload) == result_digest(content) or (
            not wanted and prior.revision == str(Revision.WITHDRAWAL)):
        with engine.begin() as conn:
            audit.record(conn, AuditKind.NOTIFICATION_UNCHANGED, study_instance_uid=run.study_instance_uid,
                         detail={"run_id": run.id, "channel": channel.name, "told_by": prior.id})
        return None
    else:
        revision = Revision.CORRECTION if wanted else Revision.WITHDRAWAL
        content = {**content, "withdrawn_findings": withdrawn_findings(prior.payload, len(content["findings"]))}
    now = utcnow()
    row = Notification(run_id=run.id, channel=channel.name, kind=channel.kind, study_instance_uid=run.study_instance_uid,
                       decision=run.decision, revision=str(revision), replaces_id=None if prior is None else prior.id,
                       payload=content, state=str(DeliveryState.PENDING), attempts=0, created_at=now,
                       next_attempt_at=now, last_image_at=run.last_instance_at)
    try:
        with Session(engine) as session, session.begin():
            session.add(row)
            session.flush()
            audit.record(session.connection(), AuditKind.NOTIFICATION_QUEUED, study_instance_uid=run.study_instance_uid,
                         detail={"run_id": run.id, "notification_id": row.id, "channel": channel.name,
                                 "decision": run.decision, "revision": str(revision), "replaces": row.replaces_id})
            queued = row.id
    except IntegrityError:  # queued meanwhile by a reclaimed attempt of the run: that row stands
        with engine.connect() as conn:
            return conn.execute(select(Notification.id).where(Notification.run_id == run.id,
                                                              Notification.channel == channel.name)).scalar_one()
    log.info("notification queued", notification_id=queued, run_id=run.id, channel=channel.name,
             decision=run.decision, revision=str(revision))
    return queued


def list_notifications(engine: Engine, state: DeliveryState | None = None, channel: str | None = None,
                       limit: int = 200) -> list[Notification]:
    """Notification rows, newest first, optionally of one state and/or channel."""
    query = select(Notification).order_by(Notification.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Notification.state == str(state))
    if channel is not None:
        query = query.where(Notification.channel == channel)
    with Session(engine, expire_on_commit=False) as session:
        return list(session.scalars(query))


def get_notification(engine: Engine, notification_id: int) -> Notification | None:
    """One notification with its attempt log loaded, or None."""
    with Session(engine, expire_on_commit=False) as session:
        return session.scalars(select(Notification).where(Notification.id == notification_id)
                               .options(selectinload(Notification.attempt_log))).one_or_none()


def requeue(engine: Engine, notification_id: int) -> bool:
    """Send a dead-lettered notification again now, with a fresh attempt count; False when it is not dead."""
    dead = (Notification.id == notification_id, Notification.state == str(DeliveryState.DEAD))
    with engine.begin() as conn:
        row = conn.execute(select(Notification.study_instance_uid, Notification.channel, Notification.attempts)
                           .where(*dead)).one_or_none()
        if row is None:
            return False
        conn.execute(update(Notification).where(*dead).values(
            state=str(DeliveryState.PENDING), attempts=0, next_attempt_at=utcnow(), claimed_until=None,
            claim_token=None))
        audit.record(conn, AuditKind.NOTIFICATION_REQUEUED, study_instance_uid=row.study_instance_uid,
                     detail={"notification_id": notification_id, "channel": row.channel,
                             "attempts_before": row.attempts})
    log.info("notification requeued", notification_id=notification_id, channel=row.channel)
    return True
