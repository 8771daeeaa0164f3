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


class AssociationOutcome(StrEnum):
    """How an association ended."""

    OPEN = "open"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"
