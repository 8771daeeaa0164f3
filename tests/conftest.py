"""Fixtures shared by the whole suite: database backends and the node as a process."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.db.schema import PatientIdentifier, Study
from tests.support import NodeProcess, require


def _postgres_admin_url() -> str | None:
    return os.environ.get("CTNODE_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ctnode.sqlite'}"
        return
    admin = _postgres_admin_url()
    require("PostgreSQL (CTNODE_TEST_PG_URL, started by .ci/run)", admin is not None)
    import psycopg

    name = f"ctnode_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_node(tmp_path: Path, db_url: str) -> Iterator[Callable[..., NodeProcess]]:
    """Start `ctnode serve` processes on ephemeral ports; all are stopped at teardown."""
    started: list[NodeProcess] = []

    def factory(name: str = "node", **dicom: Any) -> NodeProcess:
        node = NodeProcess(tmp_path / name, db_url, **dicom).start()
        started.append(node)
        return node

    yield factory
    statuses = {node.data_dir.name: node.stop() for node in started if not node.killed}
    assert all(status == 0 for status in statuses.values()), f"unclean node shutdown: {statuses}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database on each backend (a module with its own ``engine`` fixture overrides this one)."""
    upgrade(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def add_study(engine: Engine) -> Callable[..., int]:
    """Insert a study and the identifier values the receiver would have kept for it; returns its id."""

    def add(uid: str, *values: str) -> int:
        with engine.begin() as conn:
            study_id = int(conn.execute(insert(Study).values(study_instance_uid=uid).returning(Study.id)).scalar_one())
            for value in values:
                conn.execute(insert(PatientIdentifier).values(study_id=study_id, value=value))
        return study_id

    return add
