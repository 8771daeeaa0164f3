"""The outbox: enqueue produced objects per destination, read what stands, requeue dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from node.db import audit
from node.db.schema import Delivery, utcnow
from node.events import AuditKind, DeliveryState
from node.logging import get_logger
from node.storage.objects import OutputObject

log = get_logger(__name__)


def enqueue(engine: Engine, output: Path | OutputObject, destinations: Sequence[str], run_id: int | None) -> list[int]:
    """Queue the object (a file, or one the report stage wrote) for each destination; returns the delivery ids in
    that order.

    Idempotent: an object already queued for a destination (same SOP Instance UID) keeps its row and state.
    """
    obj = output if isinstance(output, OutputObject) else OutputObject.read(Path(output))
    ids = []
    for destination in dict.fromkeys(destinations):
        ids.append(_existing(engine, obj, destination) or _insert(engine, obj, destination, run_id))
    log.info("queued for delivery", sop_instance_uid=obj.sop_instance_uid, run_id=run_id, delivery_ids=ids)
    return ids


def _existing(engine: Engine, obj: OutputObject, destination: str) -> int | None:
    with engine.connect() as conn:
        return conn.execute(select(Delivery.id).where(Delivery.sop_instance_uid == obj.sop_instance_uid,
                                                      Delivery.destination == destination)).scalar_one_or_none()


def _insert(engine: Engine, obj: OutputObject, destination: str, run_id: int | None) -> int:
    now = utcnow()
    row = Delivery(run_id=run_id, destination=destination, study_instance_uid=obj.study_instance_uid,
                   sop_class_uid=obj.sop_class_uid, sop_instance_uid=obj.sop_instance_uid,
                   transfer_syntax_uid=obj.transfer_syntax_uid, path=str(obj.path), state=str(DeliveryState.PENDING),
                   attempts=0, created_at=now, next_attempt_at=now)
    try:
        with Session(engine) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id
    except IntegrityError:  # queued concurrently by another process: that row stands
        existing = _existing(engine, obj, destination)
        if existing is None:
            raise
        return existing


def list_deliveries(engine: Engine, state: DeliveryState | None = None, destination: str | None = None,
                    limit: int = 200) -> list[Delivery]:
    """Outbox rows, newest first, optionally of one state and/or destination."""
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Delivery.state == str(state))
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    with Session(engine, expire_on_commit=False) as session:
        return list(session.scalars(query))


def get_delivery(engine: Engine, delivery_id: int) -> Delivery | None:
    """One outbox row with its attempt log loaded, or None."""
    with Session(engine, expire_on_commit=False) as session:
        return session.scalars(select(Delivery).where(Delivery.id == delivery_id)
                               .options(selectinload(Delivery.attempt_log))).one_or_none()


def requeue(engine: Engine, delivery_id: int) -> bool:
    """Send a dead-lettered row again now, with a fresh attempt count; False when it is not dead-lettered."""
    with engine.begin() as conn:
        row = conn.execute(select(Delivery.sop_instance_uid, Delivery.study_instance_uid, Delivery.destination,
                                  Delivery.attempts)
                           .where(Delivery.id == delivery_id, Delivery.state == str(DeliveryState.DEAD))).one_or_none()
        if row is None:
            return False
        conn.execute(update(Delivery).where(Delivery.id == delivery_id, Delivery.state == str(DeliveryState.DEAD))
                     .values(state=str(DeliveryState.PENDING), attempts=0, next_attempt_at=utcnow(), claimed_until=None,
                             claim_token=None))
        audit.record(conn, AuditKind.DELIVERY_REQUEUED, sop_instance_uid=row.sop_instance_uid,
                     study_instance_uid=row.study_instance_uid,
                     detail={"delivery_id": delivery_id, "destination": row.destination,
                             "attempts_before": row.attempts})
    log.info("delivery requeued", delivery_id=delivery_id, destination=row.destination)
    return True
