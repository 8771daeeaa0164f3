"""Outbox rows held under a lease: claim the due ones, renew, give back, settle. One mechanism for every outbox
(DICOM deliveries, notifications): each has ``id``, ``state``, ``next_attempt_at``, ``claimed_until`` and
``claim_token`` columns, and the state ``pending`` for rows waiting for an attempt."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, or_, select, update

from node.db.clock import db_now
from node.db.schema import utcnow
from node.events import DeliveryState


def claim_due(engine: Engine, table: Any, where: Sequence[Any], limit: int, lease_s: float) -> tuple[str, list[Any]]:
    """Take up to ``limit`` due, unclaimed pending rows of ``table`` matching ``where``, oldest first; returns the
    claim token and the rows taken (ordered by id).

    PostgreSQL skips rows another sender has locked; on SQLite the single guarded UPDATE is atomic. A row
    whose lease ran out (its sender died) is due again.
    """
    token = uuid.uuid4().hex
    with engine.begin() as conn:
        now = db_now(conn)
        free = or_(table.claimed_until.is_(None), table.claimed_until < now)
        due = (select(table.id).where(*where, table.state == str(DeliveryState.PENDING),
                                      table.next_attempt_at <= now, free)
               .order_by(table.id).limit(limit).with_for_update(skip_locked=True))
        ids = list(conn.execute(due).scalars())
        if not ids:
            return token, []
        conn.execute(update(table).where(table.id.in_(ids), free)
                     .values(claimed_until=now + timedelta(seconds=lease_s), claim_token=token))
        return token, list(conn.execute(select(table).where(table.claim_token == token).order_by(table.id)).all())


def renew(engine: Engine, table: Any, token: str, ids: Sequence[int], lease_s: float) -> set[int]:
    """Extend the lease of rows ``ids`` held under ``token`` to ``lease_s`` from now (database clock); the ids
    still held."""
    if not ids:
        return set()
    with engine.begin() as conn:
        until = db_now(conn) + timedelta(seconds=lease_s)
        held = conn.execute(update(table).where(table.id.in_(list(ids)), table.claim_token == token)
                            .values(claimed_until=until).returning(table.id)).scalars()
        return set(held)


def release(engine: Engine, table: Any, token: str, ids: Sequence[int], next_attempt_at: datetime | None = None) -> None:
    """Give back rows held under ``token`` that were not attempted, due again at ``next_attempt_at`` (default now)."""
    if not ids:
        return
    with engine.begin() as conn:
        conn.execute(update(table).where(table.id.in_(list(ids)), table.claim_token == token)
                     .values(claimed_until=None, claim_token=None, next_attempt_at=next_attempt_at or utcnow()))


def settle(conn: Connection, table: Any, row_id: int, token: str, **values: Any) -> bool:
    """Write an attempt's outcome to a row still held under ``token`` and free it; False when the claim was lost."""
    return bool(conn.execute(update(table).where(table.id == row_id, table.claim_token == token)
                             .values(claimed_until=None, claim_token=None, **values)).rowcount)
