"""Builds the node's parts from settings and runs the chosen roles until SIGTERM/SIGINT."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from node.config import Settings
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.delivery import run_delivery
from node.dicom.occupancy import Occupancy, Seat
from node.dicom.scp import StorageSCP
from node.feedback import FeedbackStage
from node.hl7.listener import Hl7Listener
from node.logging import configure_logging, get_logger
from node.loops import LoopHealth, Progress, backoff_s, run_guarded
from node.notify.sender import run_notify
from node.pipeline.stabilize import Stabilizer
from node.pipeline.worker import Worker, WorkerShutdown
from node.signals import Termination
from node.storage.store import InstanceStore
from node.web.server import start_http

log = get_logger(__name__)

FILE_UMASK = 0o027
"""Every file a node process writes is 0640 and every folder 0750 (group read for backup/audit, no others)."""


@dataclass
class Node:
    """The parts one process runs, wired together."""

    settings: Settings
    engine: Engine
    store: InstanceStore
    scp: StorageSCP

    @classmethod
    def build(cls, settings: Settings, migrate: bool = True) -> Node:
        """Create data folders, bring the database schema up to date (unless told not to), build the receiver."""
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        if migrate:
            _upgrade_when_reachable(settings.database_url)
        engine = make_engine(settings.database_url, settings.database.sqlite_synchronous)
        store = InstanceStore(settings.storage)
        return cls(settings, engine, store, StorageSCP(settings.dicom, store, engine))


def _upgrade_when_reachable(url: str) -> None:
    """Migrate the database, waiting (with a growing pause) while it cannot be reached: a node started during a
    database restart waits for it instead of exiting."""
    failures = 0
    while True:
        try:
            upgrade(url)
            return
        except OperationalError as exc:
            failures += 1
            delay = backoff_s(1.0, failures)
            log.warning("database unreachable at start, waiting", error=type(exc).__name__, retry_in_s=delay)
            time.sleep(delay)


class Role(StrEnum):
    """What one `ctnode serve` process runs; ALL is the embedded default."""

    ALL = "all"
    RECEIVER = "receiver"  # the DICOM SCP (and its dicom.processes - 1 siblings)
    WORKER = "worker"  # study completion plus pipeline.workers detection processes
    DELIVERY = "delivery"  # the outbox senders


def _orphaned(parent_pid: int) -> bool:
    return os.getppid() != parent_pid


def _receiver_process(settings: Settings, parent_pid: int, progress: Progress, listening: socket.socket,
                      seat: Seat) -> None:
    """A sibling receiver: accepts on the first receiver's ``listening`` socket and counts its associations in
    the node-wide ``seat``; same store and database.

    It stops on SIGTERM, and by itself when its parent is gone (even after a kill -9 of the parent).
    """
    configure_logging(settings.logging.format, settings.logging.level)
    node = Node.build(settings, migrate=False)
    termination = Termination()
    server = node.scp.start(listening=listening, seat=seat)
    while not termination.wait(1.0) and not _orphaned(parent_pid):
        progress.beat()
    server.shutdown()
    node.engine.dispose()


def _worker_process(settings: Settings, parent_pid: int, progress: Progress) -> None:
    """A detection worker: claims runs until SIGTERM, or until its parent is gone.

    SIGTERM during a run interrupts it and gives it back to the queue, so that shutting down never
    waits for a whole inference (nor leaves the run to its lease).
    """
    configure_logging(settings.logging.format, settings.logging.level)
    engine = make_engine(settings.database_url, settings.database.sqlite_synchronous)
    stop = threading.Event()
    worker = Worker(engine, settings, stop, progress)

    def interrupt_run() -> None:
        if worker.busy:
            raise WorkerShutdown

    termination = Termination(interrupt_run)
    threading.Thread(target=_watch, args=(termination, stop, parent_pid), name="watch", daemon=True).start()
    try:
        worker.run_forever()
    except WorkerShutdown:
        pass
    finally:
        engine.dispose()


def _watch(termination: Termination, stop: threading.Event, parent_pid: int) -> None:
    """Set ``stop`` once termination is requested; SIGTERM this process first if its parent is gone."""
    while not termination.wait(1.0):
        if _orphaned(parent_pid):
            os.kill(os.getpid(), signal.SIGTERM)
    stop.set()


def _stabilize(engine: Engine, settings: Settings, stop: threading.Event, progress: Progress) -> None:
    """Settle ready studies every poll interval; any error (a database outage, a bad file) is audited and
    waited out with a growing pause."""
    stabilizer = Stabilizer(engine, settings)

    def settle() -> bool:
        stabilizer.poll()
        return False

    run_guarded("stabilize", settle, stop, settings.pipeline.poll_interval_s, progress, engine)


def _examine_feedback(engine: Engine, settings: Settings, stop: threading.Event, progress: Progress) -> None:
    """Examine the SRs the PACS sent (readers' reviews become feedback) every poll interval, guarded like
    study completion."""
    stage = FeedbackStage(engine, settings)

    def examine() -> bool:
        return bool(stage.poll())

    run_guarded("feedback", examine, stop, settings.pipeline.poll_interval_s, progress, engine)


class _Children:
    """Child processes of one kind, restarted (after a pause) when one dies, stopped together."""

    RESTART_PAUSE_S = 2.0

    def __init__(self, name: str, target: Callable[..., None], settings: Settings, count: int,
                 health: LoopHealth, shared: Callable[[int], tuple[object, ...]] = lambda index: ()) -> None:
        """``target(settings, parent_pid, progress, *shared(index))`` runs in child ``index`` (each start)."""
        self._name, self._target, self._settings, self._shared = name, target, settings, shared
        self._spawn = multiprocessing.get_context("spawn")
        self._progress = [health.register(f"{name}-{i}", settings.metrics.stall_s) for i in range(count)]
        self.processes = [self._start(i) for i in range(count)]
        self._died_at: dict[int, float] = {}

    def _start(self, index: int) -> multiprocessing.process.BaseProcess:
        args = (self._settings, os.getpid(), self._progress[index], *self._shared(index))
        process = self._spawn.Process(target=self._target, args=args, name=f"{self._name}-{index}")
        process.start()
        return process

    def supervise(self) -> None:
        """Restart children that died, each at most once per RESTART_PAUSE_S."""
        now = time.monotonic()
        for index, process in enumerate(self.processes):
            if process.is_alive():
                continue
            died = self._died_at.setdefault(index, now)
            if now - died >= self.RESTART_PAUSE_S:
                log.warning("child process died, restarting", process=process.name, exitcode=process.exitcode)
                self.processes[index] = self._start(index)
                del self._died_at[index]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(timeout=30)


def run_forever(node: Node, roles: Sequence[Role] = (Role.ALL,)) -> None:
    """Run ``roles`` until a termination signal; in-flight C-STOREs finish before the listener closes.

    Receivers: this process plus ``dicom.processes - 1`` siblings sharing the port. Workers: the study
    completion and feedback loops in this process plus ``pipeline.workers`` detection processes, restarted if they die.
    Delivery: one sender thread per destination and one per notification channel. Metrics and health on ``metrics.port`` (0 = off).
    HL7 (``hl7.enabled``): the MLLP listener for radiology reports, in a thread of the receiver process.
    """
    settings = node.settings
    wanted = set(Role) - {Role.ALL} if Role.ALL in roles else set(roles)
    termination = Termination()
    stop = threading.Event()  # set by this thread, never by a signal handler (see node.signals)
    children: list[_Children] = []
    threads: list[threading.Thread] = []
    health = LoopHealth()
    server = None
    hl7: Hl7Listener | None = None
    if Role.RECEIVER in wanted:
        occupancy = Occupancy(settings.dicom.processes, node.scp.policy.limited_aes())
        server = node.scp.start(seat=occupancy.seat(0))
        children.append(_Children("receiver", _receiver_process, settings, settings.dicom.processes - 1, health,
                                  lambda index: (server.socket, occupancy.seat(index + 1))))
        if settings.hl7.enabled:
            hl7 = Hl7Listener(settings.hl7, settings.storage.data_dir, node.engine).start()
    if Role.WORKER in wanted:
        stabilize = health.register("stabilize", settings.metrics.stall_s)
        threads.append(threading.Thread(target=_stabilize, args=(node.engine, settings, stop, stabilize),
                                        name="stabilize"))
        feedback = health.register("feedback", settings.metrics.stall_s)
        threads.append(threading.Thread(target=_examine_feedback, args=(node.engine, settings, stop, feedback),
                                        name="feedback"))
        children.append(_Children("worker", _worker_process, settings, settings.pipeline.workers, health))
    if Role.DELIVERY in wanted:
        threads.append(threading.Thread(target=run_delivery, args=(settings, stop, health), name="delivery"))
        threads.append(threading.Thread(target=run_notify, args=(settings, stop, health), name="notify"))
    for thread in threads:
        thread.daemon = True
        thread.start()
    routes = settings.pipeline.routes if Role.WORKER in wanted and settings.pipeline.workers else []
    http = start_http(settings, node.engine, "+".join(sorted(wanted)), health, routes=routes)
    log.info("node running", roles=sorted(wanted))
    try:
        while not termination.wait(1.0):
            for group in children:
                group.supervise()
    finally:
        log.info("shutting down")
        stop.set()
        if server is not None:
            server.shutdown()
        if hl7 is not None:
            hl7.stop()
        # a sender stuck on a hung destination is abandoned: its leased rows are picked up again later
        for thread in threads:
            thread.join(timeout=settings.delivery.acse_timeout_s + 5)
        for group in children:
            group.stop()
        if http is not None:
            http.shutdown()
        node.engine.dispose()
