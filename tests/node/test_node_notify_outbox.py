"""The notification outbox on both backends: one row per run and channel, corrections and withdrawals of what a
channel was told, nothing for an unchanged result or a silent run; the sender against a real MLLP RIS: retried
with backoff until acknowledged, dead-lettered, requeued, and a notification whose sender died is sent again with
the same control ID."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update

from node.config import Settings
from node.db.schema import AuditEvent, Notification, NotificationAttempt, Run, utcnow
from node.events import AuditKind, DeliveryState, RunMode
from node.notify.outbox import channels_for, enqueue_run, requeue
from node.notify.sender import ChannelSender
from tests.integration.fhir_server import FhirServer
from tests.integration.ris import Ris
from tests.support import free_port

UID = "1.2.826.0.1.3680043.8.498.9001"
BLEED = {"label": "hyperdense_lesion", "score": 0.81, "centre_mm": [1.0, 2.0, 3.0], "size_mm": [14.0, 12.0, 9.0],
         "finding_type": {"value": "274100004", "scheme": "SCT", "meaning": "Cerebral hemorrhage"}, "urgent": True}


@pytest.fixture
def ris() -> Iterator[Ris]:
    server = Ris(free_port()).start()
    yield server
    server.stop()


def _settings(ris_port: int, decisions: list[str] | None = None, **notify: Any) -> Settings:
    channel: dict[str, Any] = {"name": "ris", "kind": "hl7", "host": "127.0.0.1", "port": ris_port, "timeout_s": 2}
    if decisions is not None:
        channel["decisions"] = decisions
    return Settings(notify={"channels": [channel], "backoff_initial_s": 0.01, "backoff_max_s": 0.02,
                            "backoff_jitter": 0, **notify},
                    pipeline={"routes": [{"model": "head", "notify": ["ris"]}]}, storage={"data_dir": "/nonexistent"})


@pytest.fixture
def add_run(engine: Engine, add_study: Callable[..., int]) -> Callable[..., int]:
    study_id = add_study(UID)

    def add(version: int, decision: str, findings: list[dict[str, Any]] | None = None,
            mode: RunMode = RunMode.LIVE) -> int:
        now = utcnow()
        with engine.begin() as conn:
            return int(conn.execute(insert(Run).values(
                study_id=study_id, study_instance_uid=UID, model="head", version=version, status="running",
                mode=str(mode), trigger="test", input_digest="0" * 64, instance_count=0, findings=findings or [],
                decision=decision, decision_reason=f"because {version}", model_name="ctnode-head",
                model_version="0.2.0", last_instance_at=now - timedelta(seconds=3), ready_at=now)
                .returning(Run.id)).scalar_one())

    return add


def _rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(Notification).order_by(Notification.id)).all()


def test_one_row_per_run_and_channel_and_only_the_decisions_it_is_told(engine: Engine, add_run: Callable[..., int]) -> None:
    settings = _settings(1)
    positive = add_run(1, "suspected_positive", [BLEED])
    first = enqueue_run(engine, settings, positive, ["ris"])
    assert enqueue_run(engine, settings, positive, ["ris"]) == first and len(_rows(engine)) == 1
    (row,) = _rows(engine)
    assert row.revision == "original" and row.decision == "suspected_positive" and row.state == "pending"
    assert row.payload["findings"][0]["urgent"] and row.payload["findings"][0]["tracking_uid"]
    assert "patient" not in str(row.payload).lower()
    silent = add_run(2, "suspected_positive", [BLEED], RunMode.SILENT)
    assert enqueue_run(engine, settings, silent, ["ris"]) == []  # nothing clinical from a silent run


def test_a_negative_first_result_tells_nothing_by_default(engine: Engine, add_run: Callable[..., int]) -> None:
    assert enqueue_run(engine, _settings(1), add_run(1, "negative"), ["ris"]) == []
    assert len(enqueue_run(engine, _settings(1, ["suspected_positive", "negative"]), add_run(2, "negative"),
                           ["ris"])) == 1


def test_later_versions_correct_withdraw_or_say_nothing_new(engine: Engine, add_run: Callable[..., int]) -> None:
    settings = _settings(1)
    (first,) = enqueue_run(engine, settings, add_run(1, "suspected_positive", [BLEED]), ["ris"])
    assert enqueue_run(engine, settings, add_run(2, "suspected_positive", [BLEED]), ["ris"]) == []  # same result
    bigger = {**BLEED, "size_mm": [20.0, 18.0, 9.0]}
    (corrected,) = enqueue_run(engine, settings, add_run(3, "suspected_positive", [bigger]), ["ris"])
    (withdrawn,) = enqueue_run(engine, settings, add_run(4, "negative", [{**bigger, "urgent": False}]), ["ris"])
    assert enqueue_run(engine, settings, add_run(5, "not_analysed"), ["ris"]) != []  # told: it is a decision it takes
    rows = {r.id: r for r in _rows(engine)}
    assert rows[corrected].revision == "correction" and rows[corrected].replaces_id == first
    assert rows[withdrawn].revision == "withdrawal" and rows[withdrawn].replaces_id == corrected
    with engine.connect() as conn:
        kinds = list(conn.execute(select(AuditEvent.kind).where(AuditEvent.kind.like("notification.%"))).scalars())
    assert kinds.count(str(AuditKind.NOTIFICATION_UNCHANGED)) == 1 and kinds.count(str(AuditKind.NOTIFICATION_QUEUED)) == 4


def test_channels_come_from_the_live_routes_of_the_model() -> None:
    settings = _settings(1)
    assert channels_for(settings.pipeline.routes, "head") == ["ris"] and channels_for(settings.pipeline.routes, "chest") == []


def _sender(engine: Engine, settings: Settings) -> ChannelSender:
    return ChannelSender(engine, settings.notify.channels[0], settings, threading.Event())


def test_the_sender_retries_until_the_ris_accepts_and_records_each_attempt(
        engine: Engine, add_run: Callable[..., int], ris: Ris) -> None:
    settings = _settings(ris.port)
    settings.notify.channels[0].include_identifiers = False  # the test's run has no images to read them from
    (nid,) = enqueue_run(engine, settings, add_run(1, "suspected_positive", [BLEED]), ["ris"])
    sender = _sender(engine, settings)
    for mode in ("error", "wrong_id", "garbage"):
        ris.mode = mode
        assert sender.run_once() == 1
        with engine.begin() as conn:  # due again at once (the test does not wait out the backoff)
            conn.execute(update(Notification).values(next_attempt_at=utcnow()))
    ris.mode = "ack"
    assert sender.run_once() == 1 and sender.run_once() == 0
    (row,) = _rows(engine)
    assert row.state == str(DeliveryState.DELIVERED) and row.attempts == 4
    assert row.acknowledgement == {"msa_1": "AA", "msa_2": f"CTN{nid:010d}"}
    with engine.connect() as conn:
        attempts = conn.execute(select(NotificationAttempt.outcome, NotificationAttempt.error)
                                .order_by(NotificationAttempt.id)).all()
    assert [a.outcome for a in attempts] == ["failure", "failure", "failure", "success"]
    assert attempts[0].error.startswith("the RIS answered AE") and "control ID" in attempts[1].error
    assert {r.control_id for r in ris.received} == {f"CTN{nid:010d}"}  # one identity on every attempt


def test_max_attempts_dead_letters_and_retry_sends_it_again(engine: Engine, add_run: Callable[..., int],
                                                            ris: Ris) -> None:
    settings = _settings(ris.port, max_attempts=2)
    settings.notify.channels[0].include_identifiers = False
    (nid,) = enqueue_run(engine, settings, add_run(1, "suspected_positive", [BLEED]), ["ris"])
    ris.down()
    sender = _sender(engine, settings)
    for _ in range(2):
        with engine.begin() as conn:
            conn.execute(update(Notification).values(next_attempt_at=utcnow()))
        sender.run_once()
    assert _rows(engine)[0].state == str(DeliveryState.DEAD)
    assert requeue(engine, nid) and not requeue(engine, nid)
    ris.start()
    assert sender.run_once() == 1 and _rows(engine)[0].state == str(DeliveryState.DELIVERED)


def test_a_notification_whose_sender_died_is_sent_again_under_the_same_control_id(
        engine: Engine, add_run: Callable[..., int], ris: Ris) -> None:
    settings = _settings(ris.port)
    settings.notify.channels[0].include_identifiers = False
    (nid,) = enqueue_run(engine, settings, add_run(1, "suspected_positive", [BLEED]), ["ris"])
    with engine.begin() as conn:  # a sender claimed it, told the RIS, and died before recording the ACK
        conn.execute(update(Notification).values(claim_token="dead" * 8, claimed_until=utcnow() - timedelta(seconds=1)))
    assert _sender(engine, settings).run_once() == 1
    assert _rows(engine)[0].state == str(DeliveryState.DELIVERED) and ris.received[0].control_id == f"CTN{nid:010d}"


def test_a_correction_with_fewer_findings_and_a_withdrawal_leave_only_the_current_observations_current(
        engine: Engine, add_run: Callable[..., int]) -> None:
    fhir = FhirServer(free_port()).start()
    try:
        settings = Settings(notify={"channels": [{"name": "fhir", "kind": "fhir", "url": fhir.url, "timeout_s": 2,
                                                  "include_identifiers": False}]},
                            pipeline={"routes": [{"model": "head", "notify": ["fhir"]}]},
                            storage={"data_dir": "/nonexistent"})
        sender = _sender(engine, settings)
        spots = [{**BLEED, "centre_mm": [float(n), 2.0, 3.0]} for n in range(3)]

        def held() -> dict[str, str]:
            return {identity.rsplit("#", 1)[1]: r["status"] for (kind, identity), r in fhir.held.items()
                    if kind == "Observation"}

        enqueue_run(engine, settings, add_run(1, "suspected_positive", spots), ["fhir"])
        assert sender.run_once() == 1 and held() == {"1": "preliminary", "2": "preliminary", "3": "preliminary"}
        (fewer,) = enqueue_run(engine, settings, add_run(2, "suspected_positive", spots[:1]), ["fhir"])
        assert sender.run_once() == 1 and held() == {"1": "amended", "2": "entered-in-error", "3": "entered-in-error"}
        (two,) = enqueue_run(engine, settings, add_run(3, "suspected_positive", spots[1:]), ["fhir"])
        assert sender.run_once() == 1 and held() == {"1": "amended", "2": "amended", "3": "entered-in-error"}
        (withdrawn,) = enqueue_run(engine, settings, add_run(4, "negative"), ["fhir"])
        assert sender.run_once() == 1
        assert held() == {"1": "entered-in-error", "2": "entered-in-error", "3": "entered-in-error"}
        assert fhir.invalid == [] and {r.state for r in _rows(engine)} == {str(DeliveryState.DELIVERED)}
        rows = {r.id: r for r in _rows(engine)}
        assert [f["number"] for f in rows[fewer].payload["withdrawn_findings"]] == [2, 3]
        assert [f["number"] for f in rows[two].payload["withdrawn_findings"]] == [3]
        assert [f["number"] for f in rows[withdrawn].payload["withdrawn_findings"]] == [1, 2, 3]
        assert rows[withdrawn].payload["withdrawn_findings"][1]["centre_mm"] == [2.0, 2.0, 3.0]  # as v3 told it
    finally:
        fhir.stop()
