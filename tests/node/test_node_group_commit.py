"""Group commit: concurrent instances share commits, every row names its complete file, one ticket's refusal or
failed precondition costs the others nothing (SQLite and PostgreSQL, real files)."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Connection, Engine, event, func, select

import tests.node.test_node_pipeline as pipeline_tests
from node.config import Settings
from node.db import audit
from node.db.group_commit import GroupCommit
from node.db.schema import AuditEvent, Instance
from node.events import AuditKind

engine = pipeline_tests.engine
settings = pipeline_tests.settings


def _wait_for(condition: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_concurrent_instances_share_a_commit_and_every_row_names_its_complete_file(engine: Engine,
                                                                                  settings: Settings) -> None:
    files = pipeline_tests.chest_files()[:12]
    sender = pipeline_tests.Sender(engine, settings)
    sender.send(files[:1])  # row first: no commit has succeeded yet
    grouped: list[int] = []

    @event.listens_for(engine, "commit")
    def _hold_the_first(conn: Connection) -> None:
        if threading.current_thread().name == "receive-commit":
            grouped.append(len(grouped))
            if len(grouped) == 1:  # the others queue behind this batch and share the next commit
                in_batch = conn.execute(select(func.count()).select_from(Instance)).scalar_one() - 1
                _wait_for(lambda: len(sender.ingestor._commits._pending) == len(files) - 1 - in_batch)

    with ThreadPoolExecutor(max_workers=len(files)) as pool:
        for done in [pool.submit(sender.send, [path]) for path in files[1:]]:
            done.result()
    assert len(grouped) <= 2  # eleven instances, at most two commits
    with engine.connect() as conn:
        rows = conn.execute(select(Instance.path, Instance.sha256)).all()
    assert len(rows) == len(files)
    for row in rows:
        assert hashlib.sha256((sender.store.root / row.path).read_bytes()).hexdigest() == row.sha256
    assert list(sender.store.incoming.iterdir()) == []


def test_a_refusal_or_a_failed_precondition_in_a_shared_batch_costs_the_others_nothing(engine: Engine) -> None:
    commits = GroupCommit(engine, isolate=(LookupError,))

    def note(n: int, refuse: bool = False) -> object:
        def work(conn: Connection) -> int:
            audit.record(conn, AuditKind.STORE_REFUSED, detail={"n": n})
            if refuse:
                raise LookupError(n)
            return n
        return work

    blocker = commits.submit(note(0))  # the committer waits on it while the next batch forms
    tickets = [commits.submit(note(1)), commits.submit(note(2, refuse=True)), commits.submit(note(3)),
               commits.submit(note(4))]
    blocker.ready()
    for ticket in tickets[:3]:
        ticket.ready()
    tickets[3].fail()
    assert blocker.result() == 0 and tickets[0].result() == 1 and tickets[2].result() == 3
    with pytest.raises(LookupError):
        tickets[1].result()
    with engine.connect() as conn:
        noted = {e.detail["n"] for e in conn.execute(select(AuditEvent).where(
            AuditEvent.kind == str(AuditKind.STORE_REFUSED)))}
    assert noted == {0, 1, 3}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_batches_postgresql_rolls_back_for_a_deadlock_are_rerun_and_every_row_commits(engine: Engine) -> None:
    """Two receiver processes' batches lock in opposite orders: PostgreSQL detects the deadlock and rolls one back;
    its tickets run again and commit instead of failing (a sender would have got 0xA700)."""
    locked = {1: threading.Event(), 2: threading.Event()}

    def lock(n: int, then: int) -> object:
        def work(conn: Connection) -> int:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({n})")
            locked[n].set()
            locked[then].wait(30)  # the other batch holds ``then`` when this one asks for it
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({then})")
            audit.record(conn, AuditKind.STORE_REFUSED, detail={"n": n})
            return n
        return work

    first, second = GroupCommit(engine, name="first"), GroupCommit(engine, name="second")
    tickets = [first.submit(lock(1, then=2)), second.submit(lock(2, then=1))]
    for ticket in tickets:
        ticket.ready()
    assert [ticket.result() for ticket in tickets] == [1, 2]
    with engine.connect() as conn:
        noted = sorted(e.detail["n"] for e in conn.execute(select(AuditEvent).where(
            AuditEvent.kind == str(AuditKind.STORE_REFUSED))))
    assert noted == [1, 2]
