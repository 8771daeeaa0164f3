"""Fixtures shared by the whole suite: database backends and the node as a process."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

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
