"""Long-lived loops that survive any error: guarded rounds, backoff, audit, and progress for /readyz."""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Engine

from node.db import audit
from node.events import AuditKind
from node.logging import get_logger

log = get_logger(__name__)

MAX_BACKOFF_S = 60.0


class Waiter(Protocol):
    """A stop flag: ``wait(timeout)`` sleeps and returns True once stopping is requested."""

    def wait(self, timeout: float | None = ...) -> bool: ...


class Progress:
    """When a loop last finished a round (monotonic seconds, system-wide on Linux), shared with child processes."""

    def __init__(self, name: str, stall_s: float) -> None:
        self.name = name
        self.stall_s = stall_s
        self._at = multiprocessing.get_context("spawn").Value("d", time.monotonic(), lock=False)

    def beat(self) -> None:
        """Record a finished round (or a sign of life during a long one)."""
        self._at.value = time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self._at.value


@dataclass
class LoopHealth:
    """Every loop of one process tree; a loop without progress for its ``stall_s`` makes the node not ready."""

    loops: list[Progress] = field(default_factory=list)

    def register(self, name: str, stall_s: float) -> Progress:
        progress = Progress(name, stall_s)
        self.loops.append(progress)
        return progress

    def stalled(self) -> list[str]:
        """'NAME: no progress for N s (limit M s)' for each stalled loop."""
        return [f"{p.name}: no progress for {p.idle_s():.0f} s (limit {p.stall_s:g} s)"
                for p in self.loops if p.idle_s() > p.stall_s]


def where(exc: BaseException) -> str:
    """'module.py:LINE in function' of the innermost frame: enough to find the bug, no values from the data."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}"


def report_failure(engine: Engine | None, loop: str, exc: BaseException, failures: int) -> None:
    """Log and audit a failed round by its error type and place only (an error message may quote patient data)."""
    fields = {"loop": loop, "error": type(exc).__name__, "where": where(exc), "failures": failures}
    log.error("loop round failed", **fields)
    if engine is None:
        return
    try:
        with engine.begin() as conn:
            audit.record(conn, AuditKind.LOOP_FAILED, detail=fields)
    except Exception as audit_exc:  # the database may be the very thing that failed
        log.warning("loop failure not audited", loop=loop, error=type(audit_exc).__name__)


def backoff_s(interval_s: float, failures: int) -> float:
    """Delay after ``failures`` consecutive failed rounds: doubling from ``interval_s``, at most MAX_BACKOFF_S."""
    return float(min(interval_s * 2 ** min(failures, 16), max(MAX_BACKOFF_S, interval_s)))


def run_guarded(name: str, round_: Callable[[], bool], stop: Waiter, interval_s: float,
                progress: Progress | None = None, engine: Engine | None = None) -> None:
    """Call ``round_`` until ``stop`` is set: at once again when it did work (returned True), after
    ``interval_s`` when it had nothing to do, after a growing backoff when it raised."""
    failures = 0
    while True:
        try:
            busy = round_()
        except Exception as exc:
            failures += 1
            report_failure(engine, name, exc, failures)
            delay = backoff_s(interval_s, failures)
        else:
            if failures:
                log.info("loop recovered", loop=name, failures=failures)
            failures = 0
            delay = 0.0 if busy else interval_s
            if progress is not None:
                progress.beat()
        if stop.wait(delay):
            return
