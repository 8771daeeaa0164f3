"""Group commit: the rows of concurrent callers share transactions, one commit (one log flush) per batch.

A caller submits its unit of database work and gets a Ticket, makes its precondition true (the receiver:
its file renamed into place and fsynced) and says so with ``ready()`` or ``fail()``, then waits on
``result()``. A committer thread runs the work of every pending ticket in one transaction while the
callers are still syncing their files, waits until every ticket is ready, and only then commits: no
row is committed before its caller's precondition holds, and no caller learns of success before its
row is committed. A ticket that fails is left out (the batch is rolled back and the rest rerun); work
that raises one of the ``isolate`` exceptions in a shared batch has every ticket of that batch rerun alone,
so one caller's refusal never costs another its row. A concurrency conflict the database resolved by
rolling the batch back (PostgreSQL's deadlock or serialization failure, when several receiver processes
index the same study) reruns every ticket alone, a few times; any other failure (the database down, a
failed commit) fails every ticket of the batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine

from node.db.engine import rerun_after, transient

T = TypeVar("T")


class Ticket(Generic[T]):
    """One caller's work in a group commit."""

    def __init__(self, work: Callable[[Connection], T]) -> None:
        self.work = work
        self._ready = threading.Event()
        self._failed = False
        self._done = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def ready(self) -> None:
        """The precondition holds: the work may be committed."""
        self._ready.set()

    def fail(self) -> None:
        """The precondition cannot hold: the work is left out of every commit."""
        self._failed = True
        self._ready.set()

    def result(self) -> T:
        """Block until the work is committed (its result) or has failed (raises its exception)."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def _wait_ready(self) -> bool:
        self._ready.wait()
        return not self._failed

    def _finish(self, result: T | None = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()


class _Dropped(Exception):
    """A ticket of the batch failed its precondition: roll back and commit the others without it."""


class GroupCommit:
    """Commits submitted work in batches on one committer thread (started on first use, a daemon)."""

    def __init__(self, engine: Engine, isolate: tuple[type[Exception], ...] = (), name: str = "group-commit") -> None:
        """``isolate``: what one ticket's work may raise that must not cost the others their rows."""
        self.engine = engine
        self.isolate = isolate
        self.name = name
        self._pending: list[Ticket] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, work: Callable[[Connection], T]) -> Ticket[T]:
        """Queue ``work`` for the next batch; call ``ready()`` or ``fail()`` on the ticket, then ``result()``."""
        ticket: Ticket[T] = Ticket(work)
        with self._wake:
            self._pending.append(ticket)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._wake.notify()
        return ticket

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                batch, self._pending = self._pending, []
            self._commit(batch)

    def _commit(self, batch: list[Ticket], conflicts: int = 0) -> None:
        """Commit ``batch`` in one transaction; never raises (every ticket gets its result or its error).

        ``conflicts``: how many times the database already rolled this (lone) ticket back for a conflict.
        """
        results: list[object] = []
        try:
            with self.engine.begin() as conn:
                for ticket in batch:
                    results.append(ticket.work(conn))
                kept = [ticket for ticket in batch if ticket._wait_ready()]
                if len(kept) < len(batch):
                    raise _Dropped
        except _Dropped:
            if kept:
                self._commit(kept)
            return
        except Exception as exc:
            if len(batch) > 1 and (isinstance(exc, self.isolate) or transient(exc)):
                for ticket in batch:
                    self._commit([ticket])
                return
            if rerun_after(exc, conflicts):
                self._commit(batch, conflicts + 1)
                return
            for ticket in batch:
                if ticket._wait_ready():
                    ticket._finish(error=exc)
            return
        for ticket, result in zip(batch, results):
            ticket._finish(result)
