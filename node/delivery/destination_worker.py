"""One sender per destination: claim a due batch, send it over one association, record every attempt."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

from pynetdicom.association import Association
from sqlalchemy import Engine

from node.config import DeliveryConfig, Destination
from node.db import identifiers
from node.db.schema import utcnow
from node.delivery.claims import AttemptResult, Claim, claim, record_attempt, release, renew
from node.delivery.scu import AssociationFailed, StoreSCU
from node.events import AttemptOutcome
from node.logging import get_logger
from node.loops import Progress, run_guarded

log = get_logger(__name__)


class DestinationWorker:
    """Delivers the outbox rows of one destination; nothing it meets (a dead PACS, a lost database) stops it."""

    def __init__(self, engine: Engine, destination: Destination, config: DeliveryConfig, calling_ae_title: str,
                 stop: threading.Event, rng: random.Random | None = None, progress: Progress | None = None) -> None:
        self.engine = engine
        self.destination = destination
        self.config = config
        self.scu = StoreSCU(destination, config, calling_ae_title)
        self.stop = stop
        self.rng = rng or random.Random()
        self.progress = progress

    def run(self) -> None:
        """Loop until ``stop`` is set, resting ``poll_interval_s`` whenever nothing was due."""
        log.info("delivery worker started", destination=self.destination.name)
        run_guarded(f"delivery-{self.destination.name}", lambda: bool(self.run_once()), self.stop,
                    self.config.poll_interval_s, self.progress, self.engine)
        log.info("delivery worker stopped", destination=self.destination.name)

    def run_once(self) -> int:
        """Claim and attempt one batch; returns how many objects were attempted."""
        identifiers.catch_up(self.engine)  # before the claim, so that a failure holds no lease
        batch = claim(self.engine, self.destination.name, self.config.batch_size, self.config.lease_s)
        if not batch.items:
            return 0
        try:
            with self.scu.associate(batch.items) as assoc:
                return self._send_batch(batch, assoc)
        except AssociationFailed as exc:
            return self._fail_all(batch, str(exc))
        except OSError as exc:  # TLS or socket trouble while associating
            return self._fail_all(batch, f"connection failed: {type(exc).__name__}: {exc}")

    def _send_batch(self, batch: Claim, assoc: Association) -> int:
        """Send the batch's objects in order, renewing the lease of those still to send after each one; an
        object whose lease was lost meanwhile (another sender may hold it now) is not sent by this one."""
        for index, item in enumerate(batch.items):
            if self.stop.is_set():
                release(self.engine, batch, batch.items[index:])
                return index
            if index and item.id not in renew(self.engine, batch, batch.items[index:], self.config.lease_s):
                log.warning("delivery lease lost: the rest of the batch is left to its new holder",
                            destination=self.destination.name, delivery_id=item.id)
                return index
            if self.progress is not None:
                self.progress.beat()
            result = self.scu.send(assoc, item)
            record_attempt(self.engine, self.destination.name, batch, item, result, self.config, self.rng)
            if result.outcome is AttemptOutcome.FAILURE and not assoc.is_established:
                # the association is gone: the rest were not tried, and wait a first backoff before the next one
                rest_due = utcnow() + timedelta(seconds=self.config.backoff_initial_s)
                release(self.engine, batch, batch.items[index + 1:], rest_due)
                return index + 1
        return len(batch.items)

    def _fail_all(self, batch: Claim, error: str) -> int:
        log.warning("destination unreachable", destination=self.destination.name, error=error,
                    objects=len(batch.items))
        for item in batch.items:
            record_attempt(self.engine, self.destination.name, batch, item,
                           AttemptResult(AttemptOutcome.FAILURE, None, error), self.config, self.rng)
        return len(batch.items)
