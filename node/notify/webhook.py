"""The webhook channel: a signed JSON POST per notification, for pagers and chat.

Body (``build_body``): ``id`` (the message_id), ``revision``, ``replaces`` (the message_id it corrects or
withdraws, or null), ``decision``, ``reason``, ``study_instance_uid``, ``series_instance_uid``, ``study_version``,
``model``, ``findings`` (as in the payload), and ``identifiers`` (patient name, ID, issuer, birth date, sex,
accession) only when the channel is configured to carry them. The body is the same on every attempt.

Headers: ``X-Ctnode-Timestamp`` (unix seconds of this attempt), ``X-Ctnode-Signature: sha256=<hex>`` (HMAC-SHA256
with the key in ``secret_file`` over ``<timestamp>.<body bytes>``; a receiver recomputes it and rejects a stale
timestamp, so a captured request cannot be replayed later), ``Idempotency-Key`` (the message_id: a receiver
that saw it before treats the attempt as a repeat).

Any 2xx is the acknowledgement; anything else (another status, a timeout, a refused connection) is a failure
with its reason, retried by the sender.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import asdict
from typing import Any

from node.config import NotifyChannel
from node.notify.channel import Outbound, SendResult, abridged
from node.notify.http import HttpError, one_line, read_secret, request, tls_context

SIGNATURE_HEADER = "X-Ctnode-Signature"
TIMESTAMP_HEADER = "X-Ctnode-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def build_body(item: Outbound) -> bytes:
    """The JSON body of ``item``."""
    p = item.payload
    body: dict[str, Any] = {
        "id": item.message_id, "revision": str(item.revision), "replaces": item.replaces_message_id,
        "decision": item.decision, "reason": p.get("reason"),
        "study_instance_uid": p["study_instance_uid"], "series_instance_uid": p.get("series_instance_uid"),
        "study_version": p.get("study_version"), "model": p.get("model"), "findings": p.get("findings", [])}
    if item.identifiers is not None:
        body["identifiers"] = asdict(item.identifiers)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signature(key: bytes, timestamp: str, body: bytes) -> str:
    """The value of the signature header: ``sha256=`` and the hex HMAC-SHA256 of ``<timestamp>.<body>``."""
    return "sha256=" + hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


class WebhookChannel:
    """Signed JSON POSTs to one URL."""

    def __init__(self, config: NotifyChannel) -> None:
        if config.url is None or config.secret_file is None:
            raise ValueError(f"notify channel {config.name!r} needs url and secret_file")
        self.config, self.url, self.secret_file = config, config.url, config.secret_file
        self._tls = tls_context(config.tls) if config.url.startswith("https:") else None

    def send(self, item: Outbound) -> SendResult:
        body = build_body(item)
        try:
            key = read_secret(self.secret_file, "secret_file").encode("utf-8")
            timestamp = str(int(time.time()))
            reply = request("POST", self.url, body, {
                "Content-Type": "application/json; charset=utf-8", "Accept": "application/json",
                TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(key, timestamp, body),
                IDEMPOTENCY_HEADER: item.message_id}, self.config.timeout_s, self._tls)
        except HttpError as exc:
            return SendResult(False, str(exc))
        shown = abridged(reply.text)
        if not reply.ok:
            said = one_line(reply.text)
            return SendResult(False, f"the webhook answered HTTP {reply.status} {reply.reason}".rstrip()
                              + (f": {said}" if said else ""), shown)
        return SendResult(True, None, shown, {"http_status": reply.status})
