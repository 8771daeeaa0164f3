"""Create or migrate the database with Alembic (`ctnode db upgrade`, and every `ctnode serve` at start).

Several processes may start at once: the migration runs under a lock (a PostgreSQL advisory lock held on
the migrating connection; an flock beside the SQLite file), so one migrates and the others find it done.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect, pool, text
from sqlalchemy.engine import make_url

from node.db.engine import normalise_url, private_sqlite_files

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"  # package data: a wheel install migrates too
ADVISORY_LOCK_KEY = 0x6374_6E6F_6465  # "ctnode": the one advisory lock key of the node's migrations


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection  # env.py migrates on it (the one holding the lock)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating it when empty), one process at a time."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        with _file_lock(path.with_name(path.name + ".migrate-lock")):
            command.upgrade(alembic_config(url), revision)
        private_sqlite_files(path)
        return
    engine = create_engine(normalise_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
                conn.commit()
            try:
                command.upgrade(alembic_config(url, conn), revision)
                conn.commit()
            finally:
                if conn.dialect.name == "postgresql":
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                    conn.commit()
    finally:
        engine.dispose()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (created 0600 beside the database) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_current(engine: Engine) -> bool:
    """True when the database has the tables of the newest migration."""
    url = engine.url.render_as_string(hide_password=False)
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        return MigrationContext.configure(conn).get_current_revision() == head
