"""Every audit event kind and state name of the node, in one place."""

from __future__ import annotations

from enum import StrEnum


class AuditKind(StrEnum):
    """What an audit_event row records."""

    ASSOCIATION_REJECTED = "association.rejected"
    ASSOCIATION_ABORTED = "association.aborted"
    INSTANCE_QUARANTINED = "instance.quarantined"
    INSTANCE_DUPLICATE = "instance.duplicate"
    INSTANCE_CONFLICT = "instance.conflict"
    STORE_REFUSED = "store.refused"
    SPOOL_RECOVERED = "spool.recovered"
    DELIVERY_WARNING = "delivery.warning"
    DELIVERY_DEAD_LETTER = "delivery.dead_letter"
    DELIVERY_REQUEUED = "delivery.requeued"


class AssociationOutcome(StrEnum):
    """How an association ended."""

    OPEN = "open"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"


class DeliveryState(StrEnum):
    """Where one (object, destination) row of the outbox stands."""

    PENDING = "pending"  # waiting for its next attempt (first or retry)
    DELIVERED = "delivered"  # the destination answered Success or Warning
    DEAD = "dead"  # max attempts failed; only `ctnode deliveries retry` sends it again


class AttemptOutcome(StrEnum):
    """What one C-STORE attempt of a delivery came to."""

    SUCCESS = "success"
    WARNING = "warning"  # stored by the destination, with a Warning status: delivered, and audited
    FAILURE = "failure"  # a Failure status, no association, or no response: retried
