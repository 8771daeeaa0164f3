"""One clock for leases: the database server's, so hosts whose clocks disagree still agree on who holds what."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Connection, text

from node.db.schema import utcnow


def db_now(conn: Connection) -> datetime:
    """The database's current time (UTC, timezone-aware). SQLite is one file on one host: that host's clock."""
    if conn.dialect.name == "postgresql":
        value: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        return value.astimezone(timezone.utc)
    return utcnow()
