"""Writing audit_event rows (the events are named in node.events)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, insert
from sqlalchemy.exc import SQLAlchemyError

from node.db.schema import AuditEvent, utcnow
from node.events import AuditKind
from node.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")


def record(conn: Connection, kind: AuditKind, **fields: Any) -> None:
    """Add one audit event in the caller's transaction; ``detail`` holds anything beyond the columns."""
    detail = fields.pop("detail", {})
    conn.execute(insert(AuditEvent).values(kind=str(kind), at=utcnow(), detail=detail, **fields))


def write_or_log(engine: Engine, what: str, write: Callable[[Connection], T]) -> T | None:
    """Run ``write`` in a transaction of its own; if the database refuses it, log that ``what`` was not written
    and return None (never raises: the receiver answers and serves on without its database)."""
    try:
        with engine.begin() as conn:
            return write(conn)
    except SQLAlchemyError as exc:
        log.error("audit write failed", what=what, error=type(exc).__name__)
        return None


def record_or_log(engine: Engine, kind: AuditKind, **fields: Any) -> bool:
    """Write one audit event in a transaction of its own, or log that the database refused it; True if written."""
    return write_or_log(engine, str(kind), lambda conn: record(conn, kind, **fields) or True) is not None
