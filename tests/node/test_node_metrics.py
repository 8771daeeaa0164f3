"""Metrics and health endpoints: figures read from the audit database over HTTP, readiness checks, failures."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import Connection, Engine, insert, select

from node.config import MetricsConfig, Settings, StorageConfig
from node.db.engine import make_engine
from node.db.schema import (
    Association,
    Delivery,
    DeliveryAttempt,
    Instance,
    Notification,
    NotificationAttempt,
    Run,
    Series,
    Study,
)
from node.events import AttemptOutcome, DeliveryState, RunMode, RunStatus
from node.web.metrics import BUCKETS_S
from node.web.server import start_http
from tests.support import free_port

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)
Serve = Callable[..., str]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start the endpoints for an engine (storage options as keywords); returns the base URL."""
    servers = []

    def start(engine: Engine, **storage: object) -> str:
        data_dir = tmp_path / "data"
        data_dir.mkdir(exist_ok=True)
        settings = Settings(storage=StorageConfig(**{"data_dir": data_dir, "min_free_bytes": 0, **storage}),
                            metrics=MetricsConfig(host="127.0.0.1", port=free_port()))
        server = start_http(settings, engine, "worker")
        assert server is not None and server.port == settings.metrics.port
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.shutdown()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and sorted labels."""
    status, text = get(base + "/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def add_run(conn: Connection, study: int, version: int, status: RunStatus, model: str = "head",
            mode: RunMode = RunMode.LIVE, **stamps: datetime | None) -> int:
    return conn.execute(insert(Run).values(
        study_id=study, study_instance_uid="1.2.3", model=model, version=version, status=str(status), mode=str(mode),
        trigger="test", input_digest="0" * 64, instance_count=1, **stamps,
    ).returning(Run.id)).scalar_one()


def add_delivery(conn: Connection, run: int | None, destination: str, state: DeliveryState, sop_class: str,
                 acknowledged: datetime | None = None, outcomes: tuple[AttemptOutcome, ...] = ()) -> None:
    delivery = conn.execute(insert(Delivery).values(
        run_id=run, destination=destination, study_instance_uid="1.2.3", sop_class_uid=sop_class,
        sop_instance_uid=generate_uid(), transfer_syntax_uid=ExplicitVRLittleEndian, path="/out.dcm",
        state=str(state), attempts=len(outcomes), acknowledged_at=acknowledged,
    ).returning(Delivery.id)).scalar_one()
    for outcome in outcomes:
        conn.execute(insert(DeliveryAttempt).values(delivery_id=delivery, outcome=str(outcome)))


# Seconds each stage took per run, as inserted below (runs lacking either timestamp are absent).
STAGES = {
    "stabilize": [0.05, 61, 2, 0.2, 30.5, 5],  # 5 s falls in le="5.0"
    "queue": [3, 0.3, 1000, 0.08, 0.15],
    "inference": [42, 200, 12],
    "report": [1.5, 0.7, 0.2],
    "delivery": [7, 20],
    "turnaround": [53.75, 282],
}


def populate(conn: Connection) -> None:
    """Associations, instances, runs A-G in every state with stage timestamps, and their outbox."""
    for outcome in ["released", "released", "released", "rejected", "aborted"]:
        conn.execute(insert(Association).values(calling_ae="STORESCU", called_ae="CTNODE", peer_host="127.0.0.1",
                                                peer_port=1, outcome=outcome))
    study = conn.execute(insert(Study).values(study_instance_uid="1.2.3").returning(Study.id)).scalar_one()
    series = conn.execute(insert(Series).values(study_id=study, series_instance_uid="1.2.3.4")
                          .returning(Series.id)).scalar_one()
    for n in range(4):
        conn.execute(insert(Instance).values(
            series_id=series, sop_instance_uid=f"1.2.3.4.{n}", sop_class_uid=SecondaryCaptureImageStorage,
            transfer_syntax_uid=ExplicitVRLittleEndian, sha256=f"{n:064d}", size_bytes=1, path=f"{n}.dcm"))

    done, failure, success = RunStatus.DONE, AttemptOutcome.FAILURE, AttemptOutcome.SUCCESS
    a = add_run(conn, study, 1, done, last_instance_at=at(0), ready_at=at(0.05), claimed_at=at(3.05),
                inference_started_at=at(3.25), inference_ended_at=at(45.25), reports_built_at=at(46.75))
    add_delivery(conn, a, "viewer", DeliveryState.DELIVERED, SecondaryCaptureImageStorage, at(47.05), (success,))
    add_delivery(conn, a, "pacs", DeliveryState.DELIVERED, Comprehensive3DSRStorage, at(53.75), (success,))
    add_delivery(conn, a, "archive", DeliveryState.DELIVERED, Comprehensive3DSRStorage, at(446.75), (success,))
    b = add_run(conn, study, 2, done, last_instance_at=at(1000), ready_at=at(1061), claimed_at=at(1061.3),
                inference_started_at=at(1061.3), inference_ended_at=at(1261.3), reports_built_at=at(1262))
    add_delivery(conn, b, "pacs", DeliveryState.DELIVERED, Comprehensive3DSRStorage, at(1282),
                 (failure, failure, success))
    c = add_run(conn, study, 3, done, last_instance_at=at(2000), ready_at=at(2002), claimed_at=at(3002),
                inference_started_at=at(3003), inference_ended_at=at(3015), reports_built_at=at(3015.2))
    add_delivery(conn, c, "pacs", DeliveryState.PENDING, Comprehensive3DSRStorage, outcomes=(failure,))
    add_delivery(conn, c, "archive", DeliveryState.PENDING, Comprehensive3DSRStorage)
    add_delivery(conn, c, "archive", DeliveryState.DEAD, SecondaryCaptureImageStorage, outcomes=(failure,) * 3)
    add_delivery(conn, None, "pacs", DeliveryState.PENDING, SecondaryCaptureImageStorage)
    add_run(conn, study, 4, RunStatus.RUNNING, last_instance_at=at(4000), ready_at=at(4000.2), claimed_at=at(4000.28),
            inference_started_at=at(4000.3))
    add_run(conn, study, 5, RunStatus.QUEUED, ready_at=at(5000))
    add_run(conn, study, 6, RunStatus.QUEUED, last_instance_at=at(6000), ready_at=at(6030.5))
    add_run(conn, study, 7, RunStatus.FAILED, last_instance_at=at(7000), ready_at=at(7005), claimed_at=at(7005.15),
            inference_started_at=at(7005.2))
    # shadow runs of a candidate: counted under their own mode, their stages apart from the live runs'
    add_run(conn, study, 1, RunStatus.DONE, "candidate.json", RunMode.SHADOW, last_instance_at=at(0),
            ready_at=at(0.05), claimed_at=at(50.05), inference_started_at=at(50.1), inference_ended_at=at(95.1),
            reports_built_at=at(96.1))
    add_run(conn, study, 2, RunStatus.QUEUED, "candidate.json", RunMode.SHADOW, ready_at=at(1061))


def test_metrics_count_the_audit_database(engine: Engine, serve: Serve):
    base = serve(engine)
    empty = scrape(base)
    assert empty[("ctnode_instances_received_total", ())] == 0
    assert empty[("ctnode_stage_duration_seconds_count", (("mode", "live"), ("stage", "turnaround")))] == 0
    assert "process_cpu_seconds_total" in {name for name, _ in empty}, "the process collector is served too"
    with engine.begin() as conn:
        populate(conn)
    samples = scrape(base)

    def by(name: str, label: str) -> dict[str, float]:
        return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}

    assert samples[("ctnode_instances_received_total", ())] == 4
    assert by("ctnode_associations_total", "outcome") == {"open": 0, "released": 3, "rejected": 1, "aborted": 1}
    def runs(mode: str) -> dict[str, float]:
        return {dict(labels)["status"]: v for (n, labels), v in samples.items()
                if n == "ctnode_runs" and dict(labels)["mode"] == mode}

    assert runs("live") == {"queued": 2, "running": 1, "done": 3, "failed": 1, "skipped": 0}
    assert runs("shadow") == {"queued": 1, "running": 0, "done": 1, "failed": 0, "skipped": 0}
    assert runs("silent") == {"queued": 0, "running": 0, "done": 0, "failed": 0, "skipped": 0}
    assert by("ctnode_run_queue_depth", "mode") == {"live": 2, "shadow": 1, "silent": 0}
    assert by("ctnode_delivery_queue_depth", "destination") == {"pacs": 2, "archive": 1, "viewer": 0}
    assert by("ctnode_delivery_failures_total", "destination") == {"pacs": 3, "archive": 3, "viewer": 0}
    assert by("ctnode_delivery_dead_letters", "destination") == {"pacs": 0, "archive": 1, "viewer": 0}

    def histogram(stage: str, mode: str = "live") -> dict[str, float]:
        return {dict(labels)["le"]: v for (n, labels), v in samples.items()
                if n == "ctnode_stage_duration_seconds_bucket" and ("stage", stage) in labels
                and ("mode", mode) in labels}

    assert histogram("queue") == {"0.1": 1, "0.25": 2, "0.5": 3, "1.0": 3, "2.5": 3, "5.0": 4, "10.0": 4, "30.0": 4,
                                  "60.0": 4, "120.0": 4, "300.0": 4, "600.0": 4, "900.0": 4, "+Inf": 5}
    for stage, seconds in STAGES.items():
        expected = {str(bound): sum(s <= bound for s in seconds) for bound in BUCKETS_S} | {"+Inf": len(seconds)}
        assert histogram(stage) == expected, stage
        live = (("mode", "live"), ("stage", stage))
        assert samples[("ctnode_stage_duration_seconds_count", live)] == len(seconds)
        assert samples[("ctnode_stage_duration_seconds_sum", live)] == pytest.approx(sum(seconds), abs=0.01)
    assert histogram("queue", "shadow") == {str(bound): int(bound >= 50) for bound in BUCKETS_S} | {"+Inf": 1}
    assert samples[("ctnode_stage_duration_seconds_count", (("mode", "silent"), ("stage", "queue")))] == 0


def test_metrics_give_the_time_to_notification_and_the_notification_outbox(engine: Engine, serve: Serve):
    with engine.begin() as conn:
        populate(conn)
        runs = list(conn.execute(select(Run.id).order_by(Run.id)).scalars())
        for n, (channel, state, seconds, failures) in enumerate([
                ("ris", DeliveryState.DELIVERED, 1.5, 0), ("ris", DeliveryState.DELIVERED, 7.0, 2),
                ("ris", DeliveryState.PENDING, None, 1), ("pager", DeliveryState.DEAD, None, 3)]):
            nid = conn.execute(insert(Notification).values(
                run_id=runs[n], channel=channel, kind="hl7", study_instance_uid="1.2.3", decision="suspected_positive",
                revision="original", payload={}, state=str(state), attempts=failures, last_image_at=at(0),
                acknowledged_at=None if seconds is None else at(seconds), created_at=at(0), next_attempt_at=at(0))
                .returning(Notification.id)).scalar_one()
            for _ in range(failures):
                conn.execute(insert(NotificationAttempt).values(notification_id=nid, at=at(n),
                                                                outcome=str(AttemptOutcome.FAILURE)))
    samples = scrape(serve(engine))

    def by(name: str) -> dict[str, float]:
        return {dict(labels)["channel"]: v for (n, labels), v in samples.items() if n == name}

    assert by("ctnode_notification_queue_depth") == {"ris": 1, "pager": 0}
    assert by("ctnode_notification_failures_total") == {"ris": 3, "pager": 3}
    assert by("ctnode_notification_dead_letters") == {"ris": 0, "pager": 1}
    ris = {dict(labels)["le"]: v for (n, labels), v in samples.items()
           if n == "ctnode_notify_seconds_bucket" and ("channel", "ris") in labels}
    assert ris == {str(b): sum(s <= b for s in (1.5, 7.0)) for b in BUCKETS_S} | {"+Inf": 2}
    assert samples[("ctnode_notify_seconds_sum", (("channel", "ris"),))] == pytest.approx(8.5, abs=0.01)


def test_health_and_readiness_on_a_migrated_database(engine: Engine, serve: Serve):
    base = serve(engine)
    assert get(base + "/healthz") == (200, json.dumps({"status": "ok", "role": "worker"}))
    status, body = get(base + "/readyz")
    assert status == 200, body
    checks = json.loads(body)["checks"]
    assert [(c["name"], c["ok"]) for c in checks] == [
        ("database", True), ("storage_writable", True), ("storage_free_space", True)]
    assert get(base + "/nothing")[0] == 404


def failed_checks(base: str) -> list[str]:
    status, body = get(base + "/readyz")
    assert status == 503, body
    return [c["name"] for c in json.loads(body)["checks"] if not c["ok"]]


def test_not_ready_on_a_database_without_the_schema(db_url: str, serve: Serve):
    engine = make_engine(db_url)
    try:
        base = serve(engine)
        assert failed_checks(base) == ["database"]
        status, body = get(base + "/metrics")
        assert status == 503 and "unavailable" in body, "tables missing: no figures, and the server stays up"
        assert get(base + "/healthz")[0] == 200
    finally:
        engine.dispose()


def test_not_ready_when_storage_is_unwritable_or_full(engine: Engine, serve: Serve, tmp_path: Path):
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_bytes(b"")
    assert failed_checks(serve(engine, data_dir=not_a_dir)) == ["storage_writable"]
    assert failed_checks(serve(engine, min_free_bytes=2**62)) == ["storage_free_space"]


def test_metrics_answer_503_when_the_database_goes_away(engine: Engine, serve: Serve):
    base = serve(engine)
    assert scrape(base)[("ctnode_run_queue_depth", (("mode", "live"),))] == 0
    engine.dispose()
    if engine.dialect.name == "sqlite":  # a fresh empty file replaces it on the next connect
        database = Path(str(engine.url.database))
        for path in database.parent.glob(database.name + "*"):
            path.unlink()
    else:
        with psycopg.connect(os.environ["CTNODE_TEST_PG_URL"], autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{engine.url.database}" WITH (FORCE)')
    status, body = get(base + "/metrics")
    assert status == 503 and body.startswith("audit database unavailable: OperationalError"), body
    assert failed_checks(base) == ["database"]
    assert get(base + "/healthz")[0] == 200, "the server survives"


def test_port_zero_turns_the_endpoints_off(engine: Engine):
    assert start_http(Settings(metrics=MetricsConfig(port=0)), engine, "all") is None
