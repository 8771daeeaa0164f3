"""One sender per notification channel: claim what is due, tell it, record every attempt and acknowledgement.

A notification is claimed under a lease before it is sent and settled after its answer; a sender killed in
between leaves the lease to run out, and the row is sent again with the same message identity (MSH-10,
idempotency key), which the receiver recognises as the same notification.
"""

from __future__ import annotations

import random
import threading
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, insert, select

from node.config import NotifyChannel, NotifyConfig, Settings
from node.db import audit, identifiers, leases
from node.db.engine import make_engine
from node.db.schema import Instance, Notification, NotificationAttempt, RunInput, utcnow
from node.delivery.backoff import retry_delay_s
from node.events import AttemptOutcome, AuditKind, DeliveryState
from node.logging import get_logger
from node.loops import LoopHealth, Progress, run_guarded
from node.notify.channel import Channel, Outbound, SendResult, message_id
from node.notify.content import Identifiers, Revision
from node.notify.oru import Hl7Channel

log = get_logger(__name__)

BATCH = 8


def open_channel(config: NotifyChannel) -> Channel:
    """The sender side of a configured channel."""
    if config.kind == "hl7":
        return Hl7Channel(config)
    if config.kind == "fhir":
        from node.notify.fhir import FhirChannel
        return FhirChannel(config)
    if config.kind == "webhook":
        from node.notify.webhook import WebhookChannel
        return WebhookChannel(config)
    raise ValueError(f"notify channel {config.name!r}: kind {config.kind!r} has no sender")


class ChannelSender:
    """Tells one channel its due notifications, one at a time; nothing it meets (a dead RIS, a lost database)
    stops it."""

    def __init__(self, engine: Engine, channel: NotifyChannel, settings: Settings, stop: threading.Event,
                 progress: Progress | None = None, rng: random.Random | None = None) -> None:
        self.engine, self.config, self.settings = engine, channel, settings
        self.policy: NotifyConfig = settings.notify
        self.channel = open_channel(channel)
        self.stop, self.progress = stop, progress
        self.rng = rng or random.Random()

    def run(self) -> None:
        """Loop until ``stop`` is set, resting ``notify.poll_interval_s`` whenever nothing was due."""
        log.info("notification sender started", channel=self.config.name)
        run_guarded(f"notify-{self.config.name}", lambda: bool(self.run_once()), self.stop,
                    self.policy.poll_interval_s, self.progress, self.engine)
        log.info("notification sender stopped", channel=self.config.name)

    def run_once(self) -> int:
        """Claim and tell one batch; returns how many were attempted."""
        identifiers.catch_up(self.engine)
        token, rows = leases.claim_due(self.engine, Notification, [Notification.channel == self.config.name], BATCH,
                                       self.policy.lease_s)
        for index, row in enumerate(rows):
            if self.stop.is_set():
                leases.release(self.engine, Notification, token, [r.id for r in rows[index:]])
                return index
            if index and row.id not in leases.renew(self.engine, Notification, token, [r.id for r in rows[index:]],
                                                    self.policy.lease_s):
                return index
            if self.progress is not None:
                self.progress.beat()
            result = self._send(row)
            self._record(token, row, result)
        return len(rows)

    def _send(self, row: Notification) -> SendResult:
        try:
            item = Outbound(id=row.id, message_id=message_id(row.id), revision=Revision(row.revision),
                            replaces_message_id=None if row.replaces_id is None else message_id(row.replaces_id),
                            decision=row.decision, payload=row.payload,
                            identifiers=self._identifiers(row.run_id) if self.config.identifiers else None)
        except OSError as exc:  # the run's images are unreadable: the notification waits, it is not sent bare
            return SendResult(False, f"cannot read the study's identifiers: {type(exc).__name__}")
        return self.channel.send(item)

    def _identifiers(self, run_id: int) -> Identifiers:
        with self.engine.connect() as conn:
            path = conn.execute(select(Instance.path).join(RunInput, RunInput.instance_id == Instance.id)
                                .where(RunInput.run_id == run_id).order_by(Instance.id).limit(1)).scalar()
        if path is None:
            return Identifiers()
        return Identifiers.read(Path(self.settings.storage.store_dir) / path)

    def _record(self, token: str, row: Notification, result: SendResult) -> DeliveryState:
        now = utcnow()
        attempts = row.attempts + 1
        values: dict[str, object] = {"attempts": attempts, "last_error": result.error}
        if result.acknowledged:
            state = DeliveryState.DELIVERED
            values.update(acknowledged_at=now, acknowledgement=result.acknowledgement)
        elif attempts >= self.policy.max_attempts:
            state = DeliveryState.DEAD
        else:
            state = DeliveryState.PENDING
            values["next_attempt_at"] = now + timedelta(seconds=retry_delay_s(self.policy, attempts, self.rng))
        values["state"] = str(state)
        notify_s = (now - row.last_image_at).total_seconds() if row.last_image_at is not None else None
        outcome = AttemptOutcome.SUCCESS if result.acknowledged else AttemptOutcome.FAILURE
        with self.engine.begin() as conn:
            conn.execute(insert(NotificationAttempt).values(notification_id=row.id, at=now, outcome=str(outcome),
                                                            error=result.error, response=result.response))
            held = leases.settle(conn, Notification, row.id, token, **values)
            kind = {DeliveryState.DELIVERED: AuditKind.NOTIFICATION_ACKNOWLEDGED,
                    DeliveryState.DEAD: AuditKind.NOTIFICATION_DEAD_LETTER}.get(state, AuditKind.NOTIFICATION_FAILED)
            if held:
                audit.record(conn, kind, study_instance_uid=row.study_instance_uid, detail={
                    "notification_id": row.id, "run_id": row.run_id, "channel": self.config.name,
                    "attempts": attempts, "error": result.error,
                    "notify_s": round(notify_s, 3) if notify_s is not None and result.acknowledged else None})
        log.info("notification attempt", notification_id=row.id, channel=self.config.name, outcome=str(outcome),
                 attempts=attempts, state=str(state), error=result.error,
                 notify_s=round(notify_s, 3) if notify_s is not None else None)
        return state


def run_notify(settings: Settings, stop: threading.Event, health: LoopHealth | None = None) -> None:
    """Tell every configured channel its notifications until ``stop`` is set; blocks. One thread per channel,
    so a channel that is down or slow delays only its own notifications."""
    if not settings.notify.channels:
        return
    engine = make_engine(settings.database_url, settings.database.sqlite_synchronous)
    health = health or LoopHealth()
    senders = [ChannelSender(engine, channel, settings, stop,
                             health.register(f"notify-{channel.name}", settings.metrics.stall_s))
               for channel in settings.notify.channels]
    threads = [threading.Thread(target=s.run, name=f"notify-{s.config.name}", daemon=True) for s in senders]
    for thread in threads:
        thread.start()
    log.info("notification senders running", channels=[c.name for c in settings.notify.channels])
    try:
        stop.wait()
    finally:
        for thread in threads:  # a sender waiting on a hung destination is abandoned: its lease runs out, and the
            thread.join(timeout=2.0)  # notification is sent again later under the same message identity
        engine.dispose()
