"""What every notification channel is given and answers: one outbound notification in, one result out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from node.notify.content import Identifiers, Revision

RESPONSE_CHARS = 2000
"""How much of a reply an attempt row keeps."""


@dataclass(frozen=True)
class Outbound:
    """A claimed notification as a channel sends it. ``message_id`` is the same on every attempt (HL7 MSH-10,
    the webhook's idempotency key, the FHIR identifiers), so that a receiver can recognise a repeat;
    ``identifiers`` is None when the channel carries none."""

    id: int
    message_id: str
    revision: Revision
    replaces_message_id: str | None
    decision: str
    payload: dict[str, Any]
    identifiers: Identifiers | None


@dataclass(frozen=True)
class SendResult:
    """What one attempt came to: acknowledged (with what the receiver said, e.g. ids it created) or failed, why."""

    acknowledged: bool
    error: str | None = None
    response: str | None = None
    acknowledgement: dict[str, Any] | None = None


class Channel(Protocol):
    """A configured destination of notifications."""

    def send(self, item: Outbound) -> SendResult:
        """Deliver ``item`` and wait for the acknowledgement (never raises for the destination's faults)."""
        ...


def message_id(notification_id: int) -> str:
    """The stable identity of a notification on the wire (20 characters at most, as HL7 MSH-10 allows)."""
    return f"CTN{notification_id:010d}"


def abridged(text: str) -> str:
    """A reply as an attempt row keeps it."""
    return text if len(text) <= RESPONSE_CHARS else text[:RESPONSE_CHARS] + "..."
