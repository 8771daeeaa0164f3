"""The delivery loop: one worker thread per configured destination, until told to stop."""

from __future__ import annotations

import threading

from node.config import Settings
from node.db.engine import make_engine
from node.delivery.destination_worker import DestinationWorker
from node.logging import get_logger
from node.loops import LoopHealth

log = get_logger(__name__)


def run_delivery(settings: Settings, stop_event: threading.Event, health: LoopHealth | None = None) -> None:
    """Deliver the outbox to every configured destination until ``stop_event`` is set; blocks.

    Each destination has its own thread, so a destination that is down or refuses only delays its own rows.
    The database schema must be current (``ctnode serve`` and ``ctnode db upgrade`` see to that).
    """
    engine = make_engine(settings.database_url, settings.database.sqlite_synchronous)
    health = health or LoopHealth()
    workers = [DestinationWorker(engine, destination, settings.delivery, settings.dicom.ae_title, stop_event,
                                 progress=health.register(f"delivery-{destination.name}", settings.metrics.stall_s))
               for destination in settings.delivery.destinations]
    threads = [threading.Thread(target=w.run, name=f"delivery-{w.destination.name}", daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    log.info("delivery running", destinations=[d.name for d in settings.delivery.destinations])
    try:
        stop_event.wait()
    finally:
        for thread in threads:
            thread.join()
        engine.dispose()
