"""Builds the node's parts from settings and runs them until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass

from sqlalchemy import Engine

from node.config import Settings
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.delivery import run_delivery
from node.dicom.scp import StorageSCP
from node.logging import get_logger
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
    def build(cls, settings: Settings) -> Node:
        """Create data folders, bring the database schema up to date, and build the receiver."""
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url, settings.database.sqlite_synchronous)
        store = InstanceStore(settings.storage)
        return cls(settings, engine, store, StorageSCP(settings.dicom, store, engine))


def run_forever(node: Node) -> None:
    """Receive and deliver until a termination signal; in-flight C-STOREs finish before the listener closes."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
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
        node.engine.dispose()
