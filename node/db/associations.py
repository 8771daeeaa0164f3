"""The receive stage's association rows: one per association, opened when it is requested, closed when it ends."""

from __future__ import annotations

from sqlalchemy import Connection, insert, update

from node.db.schema import Association, utcnow
from node.events import AssociationOutcome


def open_association(conn: Connection, calling_ae: str, called_ae: str, host: str, port: int,
                     rejected: str | None = None) -> int:
    """The new association's row id; ``rejected``: why it was rejected (the row is then closed at once)."""
    now = utcnow()
    outcome = AssociationOutcome.REJECTED if rejected is not None else AssociationOutcome.OPEN
    return conn.execute(insert(Association).values(
        calling_ae=calling_ae[:16], called_ae=called_ae[:16], peer_host=host, peer_port=port, started_at=now,
        outcome=str(outcome), reject_reason=rejected, ended_at=now if rejected is not None else None,
    ).returning(Association.id)).scalar_one()


def close_association(conn: Connection, association_id: int, outcome: AssociationOutcome, stored: int,
                      duplicate: int, failed: int, bytes_stored: int) -> None:
    """Record how the association ended and what it brought."""
    conn.execute(update(Association).where(Association.id == association_id).values(
        outcome=str(outcome), ended_at=utcnow(), instances_stored=stored, instances_duplicate=duplicate,
        instances_failed=failed, bytes_stored=bytes_stored,
    ))
