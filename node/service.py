"""Builds the node's parts from settings and runs them until SIGTERM/SIGINT."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass

from sqlalchemy import Engine

from node.config import Settings
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.delivery import run_delivery
from node.dicom.scp import StorageSCP
from node.logging import configure_logging, get_logger
from node.storage.store import InstanceStore

log = get_logger(__name__)


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
            upgrade(settings.database_url)
        engine = make_engine(settings.database_url, settings.database.sqlite_synchronous)
        store = InstanceStore(settings.storage)
        return cls(settings, engine, store, StorageSCP(settings.dicom, store, engine))


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _receiver_process(settings: Settings, parent_pid: int) -> None:
    """A sibling receiver: the same port (SO_REUSEPORT), store and database; no delivery loop.

    It stops on SIGTERM, and by itself when its parent is gone (even after a kill -9 of the parent).
    """
    configure_logging(settings.logging.format, settings.logging.level)
    node = Node.build(settings, migrate=False)
    stop = _stop_event()
    server = node.scp.start()
    while not stop.wait(1.0) and os.getppid() == parent_pid:
        pass
    server.shutdown()
    node.engine.dispose()


def run_forever(node: Node) -> None:
    """Receive and deliver until a termination signal; in-flight C-STOREs finish before the listener closes.

    With ``dicom.processes`` > 1, that many receiver processes share the DICOM port (this one included).
    """
    stop = _stop_event()
    spawn = multiprocessing.get_context("spawn")
    siblings = [spawn.Process(target=_receiver_process, args=(node.settings, os.getpid()), name=f"receiver-{i}")
                for i in range(1, node.settings.dicom.processes)]
    for sibling in siblings:
        sibling.start()
    server = node.scp.start()
    delivery = threading.Thread(target=run_delivery, args=(node.settings, stop), name="delivery", daemon=True)
    delivery.start()
    try:
        stop.wait()
    finally:
        log.info("shutting down")
        server.shutdown()
        # a sender stuck on a hung destination is abandoned: its leased rows are picked up again later
        delivery.join(timeout=node.settings.delivery.acse_timeout_s + 5)
        for sibling in siblings:
            sibling.terminate()
        for sibling in siblings:
            sibling.join(timeout=30)
        node.engine.dispose()
