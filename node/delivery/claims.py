"""Claiming due outbox rows for one destination under a lease, and recording what each attempt came to."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, insert

from node.config import DeliveryConfig
from node.db import audit, leases
from node.db.schema import Delivery, DeliveryAttempt, utcnow
from node.delivery.backoff import retry_delay_s
from node.events import AttemptOutcome, AuditKind, DeliveryState
from node.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Claimed:
    """An outbox row this sender holds until its lease ends: its id, the file it sends and what the association
    needs of its identity, its attempts so far."""

    id: int
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    attempts: int


@dataclass(frozen=True)
class AttemptResult:
    """What one C-STORE attempt came to; ``status`` is the response status when there was a response."""

    outcome: AttemptOutcome
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Claim:
    """The rows one sender took for one batch, and the token that proves it still holds them."""

    token: str
    items: tuple[Claimed, ...]


def claim(engine: Engine, destination: str, limit: int, lease_s: float) -> Claim:
    """Take up to ``limit`` due, unclaimed pending rows of ``destination``, oldest first (see
    :func:`node.db.leases.claim_due`)."""
    token, rows = leases.claim_due(engine, Delivery, [Delivery.destination == destination], limit, lease_s)
    return Claim(token, tuple(Claimed(r.id, Path(r.path), r.sop_class_uid, r.sop_instance_uid, r.study_instance_uid,
                                      r.transfer_syntax_uid, r.attempts) for r in rows))


def renew(engine: Engine, claim: Claim, items: Sequence[Claimed], lease_s: float) -> set[int]:
    """Extend the lease of ``items`` to ``lease_s`` from now (database clock); the ids still held."""
    return leases.renew(engine, Delivery, claim.token, [i.id for i in items], lease_s)


def record_attempt(engine: Engine, destination: str, claim: Claim, item: Claimed, result: AttemptResult,
                   config: DeliveryConfig, rng: random.Random | None = None) -> DeliveryState:
    """Log the attempt and move the row on: delivered, pending with a backoff, or dead after max attempts."""
    now = utcnow()
    attempts = item.attempts + 1
    delivered = result.outcome in (AttemptOutcome.SUCCESS, AttemptOutcome.WARNING)
    values: dict[str, object] = {"attempts": attempts, "last_status": result.status, "last_error": result.error}
    if delivered:
        state = DeliveryState.DELIVERED
        values["acknowledged_at"] = now
    elif attempts >= config.max_attempts:
        state = DeliveryState.DEAD
    else:
        state = DeliveryState.PENDING
        values["next_attempt_at"] = now + timedelta(seconds=retry_delay_s(config, attempts, rng))
    values["state"] = str(state)
    with engine.begin() as conn:
        conn.execute(insert(DeliveryAttempt).values(delivery_id=item.id, at=now, outcome=str(result.outcome),
                                                    status=result.status, error=result.error))
        held = leases.settle(conn, Delivery, item.id, claim.token, **values)
        event = {AttemptOutcome.WARNING: AuditKind.DELIVERY_WARNING}.get(result.outcome)
        if state is DeliveryState.DEAD:
            event = AuditKind.DELIVERY_DEAD_LETTER
        if held and event is not None:
            audit.record(conn, event, sop_instance_uid=item.sop_instance_uid,
                         study_instance_uid=item.study_instance_uid, status=result.status,
                         detail={"delivery_id": item.id, "destination": destination, "attempts": attempts,
                                 "error": result.error})
    if not held:
        log.warning("claim lost before the attempt was recorded", delivery_id=item.id, destination=destination)
    log.info("delivery attempt", delivery_id=item.id, destination=destination, sop_instance_uid=item.sop_instance_uid,
             outcome=str(result.outcome), status=result.status, attempts=attempts, state=str(state), error=result.error)
    return state


def release(engine: Engine, claim: Claim, items: Sequence[Claimed], next_attempt_at: datetime | None = None) -> None:
    """Give back claimed rows that were not attempted, due again at ``next_attempt_at`` (default now)."""
    leases.release(engine, Delivery, claim.token, [i.id for i in items], next_attempt_at)
