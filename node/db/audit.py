"""Writing audit_event rows (the events are named in node.events)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert

from node.db.schema import AuditEvent, utcnow
from node.events import AuditKind


def record(conn: Connection, kind: AuditKind, **fields: Any) -> None:
    """Add one audit event in the caller's transaction; ``detail`` holds anything beyond the columns."""
    detail = fields.pop("detail", {})
    conn.execute(insert(AuditEvent).values(kind=str(kind), at=utcnow(), detail=detail, **fields))
