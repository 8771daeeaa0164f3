"""Fixtures of the label tests: a migrated database on each backend, and studies to match reports to."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, insert

from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.db.schema import PatientIdentifier, Study


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database on SQLite and on PostgreSQL."""
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
