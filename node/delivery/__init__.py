"""Deliver stage: the outbox of produced objects and the C-STORE senders that empty it, one per destination."""

from node.delivery.destinations import destinations_for_study
from node.delivery.outbox import enqueue, get_delivery, list_deliveries, requeue
from node.delivery.runner import run_delivery

__all__ = [
    "destinations_for_study",
    "enqueue",
    "get_delivery",
    "list_deliveries",
    "requeue",
    "run_delivery",
]
