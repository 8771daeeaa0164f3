"""Engine for SQLite (embedded default) and PostgreSQL (psycopg 3); when to rerun a conflicted transaction."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine whose every commit is durable: SQLite in WAL mode with the given synchronous level."""
    url = normalise_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":

        database = engine.url.database

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            if database not in (None, "", ":memory:"):
                private_sqlite_files(Path(database))
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


# PostgreSQL's "deadlock detected" and "could not serialize access": the server rolled the transaction back
# so that a concurrent one could go on; run again, the same work succeeds.
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
CONFLICT_RETRIES = 5  # reruns of one transaction the database rolled back for a concurrency conflict


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a concurrency conflict the database resolved by rolling back: rerunning succeeds."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _TRANSIENT_SQLSTATES


def rerun_after(exc: BaseException, reruns: int) -> bool:
    """Whether a transaction that raised ``exc`` after ``reruns`` reruns should run again: a conflict within
    the budget, after a short random pause that takes it out of step with the other writer."""
    if not transient(exc) or reruns >= CONFLICT_RETRIES:
        return False
    time.sleep(random.uniform(0.001, 0.01) * (reruns + 1))
    return True


def private_sqlite_files(path: Path) -> None:
    """Make a SQLite database (and its WAL and shared-memory files) readable and writable by its owner only."""
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        try:
            os.chmod(path.with_name(name), 0o600)
        except (FileNotFoundError, PermissionError):
            pass
