"""INSERT ... ON CONFLICT DO NOTHING, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.db.schema import Base


def insert_ignore(conn: Connection, model: type[Base], key: str | Sequence[str], values: dict[str, Any]) -> None:
    """Insert ``values`` into ``model``'s table unless a row with the same unique ``key`` (column or columns) exists."""
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    columns = [key] if isinstance(key, str) else list(key)
    conn.execute(dialect_insert(model).values(**values).on_conflict_do_nothing(index_elements=columns))
