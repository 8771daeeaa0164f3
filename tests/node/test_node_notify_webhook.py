"""The webhook channel against a real receiver that checks the HMAC-SHA256 signature, the timestamp and the
idempotency key: what it posts, that a wrong key is refused (and that is a failure), that a retry is the same
notification, and that the payload carries no identifiers unless the channel is configured to."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from node.config import NotifyChannel
from node.notify.channel import Outbound, message_id
from node.notify.content import Identifiers, Revision
from node.notify.sender import open_channel
from node.notify.webhook import WebhookChannel, build_body, signature
from tests.integration.webhook_receiver import WebhookReceiver
from tests.support import free_port

KEY = "a-shared-webhook-key"
PAYLOAD: dict[str, Any] = {
    "run_id": 7, "study_instance_uid": "1.2.826.0.1.3680043.8.498.77", "series_instance_uid": "1.2.3.4",
    "study_version": 2, "model": {"name": "ctnode-head", "version": "0.2.0"}, "decision": "suspected_positive",
    "reason": "1 urgent finding(s); first hyperdense_lesion score 0.81, 15 mm",
    "findings": [{"label": "hyperdense_lesion", "score": 0.81,
                  "finding_type": {"value": "274100004", "scheme": "SCT", "meaning": "Cerebral hemorrhage"},
                  "centre_mm": [-26.6, -59.2, 36.4], "size_mm": [14.3, 14.5, 13.1], "tracking_uid": "2.25.1",
                  "urgent": True}]}
IDS = Identifiers(patient_name="Müller^Jürgen", patient_id="MRN-42", issuer_of_patient_id="HOSP",
                  birth_date="19500101", sex="M", accession_number="ACC-7")
SECRETS = ("Müller", "Jürgen", "MRN-42", "HOSP", "19500101", "ACC-7")


def _item(ids: Identifiers | None = None, revision: Revision = Revision.ORIGINAL, notification_id: int = 5,
          replaces: int | None = None) -> Outbound:
    return Outbound(notification_id, message_id(notification_id), revision,
                    None if replaces is None else message_id(replaces), PAYLOAD["decision"], PAYLOAD, ids)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(free_port(), KEY.encode()).start()
    yield server
    server.stop()


def _channel(url: str, tmp_path: Path, key: str = KEY, timeout_s: float = 3.0, **extra: Any) -> WebhookChannel:
    secret = tmp_path / "webhook.key"
    secret.write_text(key + "\n")
    channel = open_channel(NotifyChannel(name="pager", kind="webhook", url=url, secret_file=secret,
                                         timeout_s=timeout_s, **extra))
    assert isinstance(channel, WebhookChannel)
    return channel


def test_a_signed_post_is_acknowledged_and_carries_the_result(receiver: WebhookReceiver, tmp_path: Path) -> None:
    result = _channel(receiver.url, tmp_path).send(_item())
    assert result.acknowledged, result.error
    assert result.acknowledgement == {"http_status": 200}
    (got,) = receiver.requests
    assert got.answered == 200 and got.headers["idempotency-key"] == "CTN0000000005"
    assert got.headers["content-type"].startswith("application/json")
    timestamp = got.headers["x-ctnode-timestamp"]
    assert got.headers["x-ctnode-signature"] == "sha256=" + hmac.new(
        KEY.encode(), f"{timestamp}.".encode() + got.body, hashlib.sha256).hexdigest()
    body = got.json
    assert body == {"id": "CTN0000000005", "revision": "original", "replaces": None,
                    "decision": "suspected_positive", "reason": PAYLOAD["reason"],
                    "study_instance_uid": PAYLOAD["study_instance_uid"], "series_instance_uid": "1.2.3.4",
                    "study_version": 2, "model": PAYLOAD["model"], "findings": PAYLOAD["findings"]}


def test_a_correction_names_what_it_replaces(receiver: WebhookReceiver, tmp_path: Path) -> None:
    assert _channel(receiver.url, tmp_path).send(_item(revision=Revision.CORRECTION, notification_id=6,
                                                       replaces=5)).acknowledged
    body = receiver.requests[0].json
    assert body["id"] == "CTN0000000006" and body["revision"] == "correction" and body["replaces"] == "CTN0000000005"


def test_a_wrong_key_is_refused_by_the_receiver_and_is_a_failure(receiver: WebhookReceiver, tmp_path: Path) -> None:
    result = _channel(receiver.url, tmp_path, key="not-the-key").send(_item())
    assert not result.acknowledged
    assert result.error == 'the webhook answered HTTP 401 Unauthorized: {"result": "bad signature"}'
    assert receiver.taken == {}


def test_a_stale_timestamp_or_a_tampered_body_is_refused(receiver: WebhookReceiver) -> None:
    body = build_body(_item())
    fresh = {"x-ctnode-timestamp": "1700000000", "idempotency-key": "CTN0000000005",
             "x-ctnode-signature": signature(KEY.encode(), "1700000000", body)}
    assert receiver.verdict(body, fresh) == (401, "stale timestamp")
    assert receiver.verdict(body.replace(b"0.81", b"0.18"), fresh) == (401, "bad signature")


def test_a_retry_is_the_same_notification_to_the_receiver(receiver: WebhookReceiver, tmp_path: Path) -> None:
    channel = _channel(receiver.url, tmp_path)
    receiver.status = 503
    failed = channel.send(_item())
    assert not failed.acknowledged
    assert failed.error == 'the webhook answered HTTP 503 Service Unavailable: {"result": "try later"}'
    receiver.status = None
    assert channel.send(_item()).acknowledged
    first, retry = receiver.requests
    assert first.body == retry.body and first.headers["idempotency-key"] == retry.headers["idempotency-key"]
    assert list(receiver.taken) == ["CTN0000000005"]  # taken once


def test_no_identifiers_unless_configured(receiver: WebhookReceiver, tmp_path: Path) -> None:
    channel_config = NotifyChannel(name="pager", kind="webhook", url=receiver.url, secret_file=tmp_path / "k")
    assert channel_config.identifiers is False  # a webhook carries none by default
    assert _channel(receiver.url, tmp_path).send(_item(ids=None)).acknowledged
    text = receiver.requests[0].body.decode()
    assert "identifiers" not in json.loads(text) and not [s for s in SECRETS if s in text]

    carried = NotifyChannel(name="pager", kind="webhook", url=receiver.url, secret_file=tmp_path / "k",
                            include_identifiers=True)
    assert carried.identifiers is True
    assert _channel(receiver.url, tmp_path, include_identifiers=True).send(_item(ids=IDS)).acknowledged
    assert receiver.requests[1].json["identifiers"] == asdict(IDS)


def test_a_receiver_that_is_down_or_slow_is_a_failure_with_its_reason(tmp_path: Path) -> None:
    port = free_port()
    down = _channel(f"http://127.0.0.1:{port}/hook", tmp_path).send(_item())
    assert not down.acknowledged
    assert (down.error or "").startswith(f"cannot connect to 127.0.0.1:{port}: ConnectionRefusedError")

    import socket

    with socket.socket() as listener:  # accepts the connection, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        silent = listener.getsockname()[1]
        slow = _channel(f"http://127.0.0.1:{silent}/hook", tmp_path, timeout_s=0.5).send(_item())
    assert not slow.acknowledged and slow.error == f"no answer from 127.0.0.1:{silent} within 0.5 s"


def test_a_missing_secret_file_is_a_failure_that_sends_nothing(receiver: WebhookReceiver, tmp_path: Path) -> None:
    channel = _channel(receiver.url, tmp_path)
    (tmp_path / "webhook.key").unlink()
    result = channel.send(_item())
    assert not result.acknowledged
    assert result.error == f"cannot read secret_file {str(tmp_path / 'webhook.key')!r}: FileNotFoundError"
    assert receiver.requests == []
