"""Loops that survive bad values, bad models, database errors and idle clients (SQLite and PostgreSQL, real files)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

import node.delivery.claims as claims_module
import node.pipeline.queue as queue_module
import node.pipeline.stabilize as stabilize_module
import node.pipeline.worker as worker_module
import tests.node.test_node_pipeline as pipeline_tests
from node.config import Route, Settings
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.db.schema import AuditEvent, Delivery, Run, utcnow
from node.delivery import enqueue
from node.delivery.claims import claim, renew
from node.events import AuditKind, RunStatus
from node.loops import LoopHealth, run_guarded
from node.pipeline.queue import claim_run
from node.pipeline.stabilize import Stabilizer
from node.pipeline.worker import ClaimLost, Heartbeat, Worker
from node.web.server import start_http
from tests.support import NodeProcess, dicom_files, free_port, require_ct

MODELS = Path(__file__).resolve().parents[2] / "detector" / "registry" / "models"


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database={"url": db_url}, storage={"data_dir": tmp_path / "data", "min_free_bytes": 0},
                    pipeline={"quiet_s": 30, "lease_s": 4, "heartbeat_s": 1, "max_attempts": 2, "retry_delay_s": 0,
                              "poll_interval_s": 0.05},
                    metrics={"host": "127.0.0.1", "port": free_port(), "request_timeout_s": 1})


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    settings.storage.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


def audits(engine: Engine, kind: AuditKind) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditEvent).where(AuditEvent.kind == str(kind)).order_by(AuditEvent.id)))


def with_raw_value(source: Path, out: Path, keyword: str, value: bytes) -> Path:
    """A copy of ``source`` whose ``keyword`` element holds exactly ``value`` on disk (no pydicom validation)."""
    ds = pydicom.dcmread(source)
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    value += b" " * (len(value) % 2)
    ds._dict[tag] = RawDataElement(tag, pydicom.datadict.dictionary_VR(tag), len(value), value, 0, False, True)
    ds.save_as(out)
    return out


def damaged_model(folder: Path, *, weights: bytes | None = None, card: bytes | None = None) -> Path:
    """A copy of the shipped chest model with other weights bytes (the card's sha256 updated to match them) or
    other card bytes; returns the card's path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads((MODELS / "ctnode-chest.json").read_text())
    if weights is not None:
        (folder / data["weights"]["file"]).write_bytes(weights)
        data["weights"]["sha256"] = hashlib.sha256(weights).hexdigest()
    else:
        shutil.copyfile(MODELS / data["weights"]["file"], folder / data["weights"]["file"])
    path = folder / "ctnode-chest.json"
    path.write_bytes(card if card is not None else json.dumps(data).encode())
    return path


def corrupt_weights() -> bytes:
    """The shipped weights with their middle overwritten: a damaged archive, as a bad disk or copy leaves it."""
    good = bytearray((MODELS / "ctnode-chest-0.2.0.pt").read_bytes())
    middle = len(good) // 2
    good[middle:middle + 4096] = b"\xff" * 4096
    return bytes(good[: len(good) * 3 // 4])


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_an_out_of_range_numeric_string_does_not_stop_study_completion(engine: Engine, settings: Settings,
                                                                     tmp_path: Path) -> None:
    files = pipeline_tests.chest_files()
    bad = with_raw_value(files[10], tmp_path / "bad.dcm", "ImagesInAcquisition", b"1e400")
    with pytest.raises(OverflowError):  # what the completion stage used to meet, and die of
        int(pydicom.dcmread(bad).ImagesInAcquisition)
    sender = pipeline_tests.Sender(engine, settings)
    sender.send(files[:10] + [bad] + files[11:])
    sender.release()
    [run_id] = Stabilizer(engine, settings).poll()
    with engine.connect() as conn:
        run = conn.execute(select(Run).where(Run.id == run_id)).one()
    assert run.status == RunStatus.QUEUED and run.trigger.startswith("fast path") and run.instance_count == 64


def test_one_study_that_breaks_study_completion_does_not_hold_back_the_others(
        engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error nobody foresaw (simulated: the real ones known are fixed above) while judging one study."""
    chest = pipeline_tests.chest_files()
    head = dicom_files(require_ct("head_ge_patient"))
    poisoned = str(pydicom.dcmread(chest[0], stop_before_pixels=True).SeriesInstanceUID)
    real = stabilize_module.route_study

    def route(routes: Any, series: Any, *args: Any) -> Any:
        if any(facts.series_instance_uid == poisoned for facts in series):
            raise ZeroDivisionError("an unforeseen bug")
        return real(routes, series, *args)

    monkeypatch.setattr(stabilize_module, "route_study", route)
    for files in (chest, head):
        sender = pipeline_tests.Sender(engine, settings)
        sender.send(files)
        sender.release()
    [run_id] = Stabilizer(engine, settings).poll(utcnow() + timedelta(seconds=settings.pipeline.quiet_s + 1))
    with engine.connect() as conn:
        run = conn.execute(select(Run).where(Run.id == run_id)).one()
    assert run.model == "head" and run.status == RunStatus.QUEUED
    [failed] = audits(engine, AuditKind.LOOP_FAILED)
    assert failed.detail["loop"].startswith("stabilize study ") and failed.detail["error"] == "ZeroDivisionError"


def test_a_loop_round_that_raises_is_audited_backed_off_and_the_loop_goes_on(engine: Engine) -> None:
    health = LoopHealth()
    progress = health.register("stabilize", stall_s=3600)
    stop = threading.Event()
    calls: list[int] = []

    def round_() -> bool:
        calls.append(1)
        if len(calls) <= 2:
            raise OverflowError("cannot convert float infinity to integer: PATIENT^SECRET")
        if len(calls) == 4:
            stop.set()
        return False

    run_guarded("stabilize", round_, stop, 0.01, progress, engine)
    assert len(calls) == 4  # two failed rounds, then it went on until told to stop
    failed = audits(engine, AuditKind.LOOP_FAILED)
    assert [a.detail["failures"] for a in failed] == [1, 2]
    assert failed[0].detail["loop"] == "stabilize" and failed[0].detail["error"] == "OverflowError"
    assert "SECRET" not in json.dumps([a.detail for a in failed])  # the message (maybe patient data) is not kept
    assert health.stalled() == []


def test_readyz_names_a_stalled_loop_and_a_routed_model_that_cannot_be_loaded(engine: Engine, settings: Settings,
                                                                             tmp_path: Path) -> None:
    health = LoopHealth()
    health.register("stabilize", stall_s=3600).beat()
    healthy = start_http(settings, engine, "worker", health, ["chest"])
    assert healthy is not None
    try:
        status, body = get(healthy.port, "/readyz")
        assert status == 200, body
        assert {c["name"]: c["ok"] for c in body["checks"]}["models"] is True
    finally:
        healthy.shutdown()

    health.register("worker-0", stall_s=0)  # a worker process that never finished a round
    corrupt = damaged_model(tmp_path / "corrupt", weights=corrupt_weights())
    not_utf8 = damaged_model(tmp_path / "latin1", card=json.dumps({"name": "poumon"}).encode().replace(b"ou", b"\xf4"))
    server = start_http(settings, engine, "worker", health, [str(corrupt), str(not_utf8)])
    assert server is not None
    try:
        status, body = get(server.port, "/readyz")
    finally:
        server.shutdown()
    assert status == 503
    checks = {c["name"]: c for c in body["checks"]}
    assert not checks["loops"]["ok"] and "worker-0: no progress" in checks["loops"]["detail"]
    assert "stabilize" not in checks["loops"]["detail"]
    assert not checks["models"]["ok"]
    assert "do not load" in checks["models"]["detail"] and "not UTF-8" in checks["models"]["detail"]


def test_a_model_whose_weights_do_not_load_fails_its_run_after_retries_without_stopping_the_worker(
        engine: Engine, settings: Settings, tmp_path: Path) -> None:
    card = damaged_model(tmp_path / "corrupt", weights=corrupt_weights())
    settings.pipeline.routes = [Route(model=str(card), description_patterns=["chest"])]
    sender = pipeline_tests.Sender(engine, settings)
    sender.send(pipeline_tests.chest_files())
    sender.release()
    [run_id] = Stabilizer(engine, settings).poll()
    stop = threading.Event()
    worker = Worker(engine, settings, stop)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            worker.run_forever()  # loads the routed models first: the broken one must not kill the process
        except BaseException as exc:  # noqa: BLE001 - the test reports anything that escapes
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    try:
        while True:
            with engine.connect() as conn:
                run = conn.execute(select(Run).where(Run.id == run_id)).one()
            if run.status == RunStatus.FAILED or not thread.is_alive():
                break
            time.sleep(0.1)
        assert thread.is_alive() and not errors  # the worker goes on after the failed run
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert run.status == RunStatus.FAILED and run.attempts == settings.pipeline.max_attempts
    assert run.error.startswith(f"model {card} cannot be loaded: ") and "do not load" in run.error
    assert len(audits(engine, AuditKind.RUN_RETRY)) == settings.pipeline.max_attempts - 1
    assert len(audits(engine, AuditKind.RUN_FAILED)) == 1


def test_a_half_sent_http_request_is_dropped_and_does_not_hold_the_server(engine: Engine, settings: Settings) -> None:
    server = start_http(settings, engine, "worker")
    assert server is not None
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as idle:
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert get(server.port, "/healthz")[0] == 200  # served meanwhile
            assert idle.recv(1024) == b""  # the server closed the idle connection (request_timeout_s)
    finally:
        server.shutdown()


def test_heartbeat_survives_database_errors_and_gives_the_claim_up_before_the_lease_ends(
        engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suspected double writer: a heartbeat thread that died on a database error let the lease run out while
    its worker went on writing. Now a failed renewal is retried; renewals failing for nearly a lease make the
    claim lost (audited) before the lease ends, and every later write of that worker raises ClaimLost."""
    sender = pipeline_tests.Sender(engine, settings)
    sender.send(pipeline_tests.chest_files())
    sender.release()
    Stabilizer(engine, settings).poll()
    run = claim_run(engine, settings.pipeline, "w1")
    assert run is not None
    real = worker_module.heartbeat
    calls: list[bool] = []
    failing = {"on": True, "count": 2}

    def flaky(*args: Any) -> bool:
        calls.append(True)
        if failing["on"] and (failing["count"] is None or len(calls) <= failing["count"]):
            raise OperationalError("UPDATE run", {}, Exception("server closed the connection unexpectedly"))
        return real(*args)

    monkeypatch.setattr(worker_module, "heartbeat", flaky)
    with Heartbeat(engine, run, settings) as beat:
        while len(calls) < 4:
            time.sleep(0.05)
        assert beat.alive and not beat.lost  # two failures, then renewals again
    failing["count"] = None  # from now on every renewal fails
    calls.clear()
    worker = Worker(engine, settings, threading.Event())
    with Heartbeat(engine, run, settings) as beat:
        while not beat.lost:
            time.sleep(0.05)
        assert len(calls) >= 2
        with pytest.raises(ClaimLost):
            worker._stage(run, beat, reports_built_at=None)
    [lost] = audits(engine, AuditKind.LEASE_LOST)
    assert lost.detail["run_id"] == run.id


def test_a_long_delivery_batch_renews_its_lease_so_no_second_sender_takes_it(engine: Engine, settings: Settings,
                                                                              tmp_path: Path) -> None:
    """The suspected duplicate send: a batch that outlives its lease is claimed again by another sender."""
    files = pipeline_tests.chest_files()[:4]
    for path in files:
        enqueue(engine, path, ["pacs"], None)
    first = claim(engine, "pacs", 10, lease_s=2)
    assert len(first.items) == 4
    assert renew(engine, first, first.items[1:], lease_s=60) == {i.id for i in first.items[1:]}
    with engine.connect() as conn:
        leases = dict(conn.execute(select(Delivery.id, Delivery.claimed_until)).all())
    while True:  # wait until the first item's unrenewed lease has run out on the database's clock
        second = claim(engine, "pacs", 10, lease_s=60)
        if second.items:
            break
        time.sleep(0.2)
    assert [i.id for i in second.items] == [first.items[0].id]  # only the row whose lease was not renewed
    assert renew(engine, first, first.items, lease_s=60) == {i.id for i in first.items[1:]}
    assert leases[first.items[1].id] > leases[first.items[0].id]


def test_a_host_whose_clock_runs_ahead_does_not_take_live_runs_or_deliveries(
        engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leases are compared on the database's clock: a second host an hour ahead (simulated: its clock is the one
    thing a test cannot move for real) neither reclaims a run nor re-claims outbox rows whose lease is live."""
    sender = pipeline_tests.Sender(engine, settings)
    sender.send(pipeline_tests.chest_files())
    sender.release()
    Stabilizer(engine, settings).poll()
    assert claim_run(engine, settings.pipeline, "host-a") is not None
    enqueue(engine, pipeline_tests.chest_files()[0], ["pacs"], None)
    assert len(claim(engine, "pacs", 10, lease_s=60).items) == 1
    ahead = utcnow() + timedelta(hours=1)
    for module in (queue_module, claims_module):
        monkeypatch.setattr(module, "utcnow", lambda: ahead)
    assert claim_run(engine, settings.pipeline, "host-b") is None
    assert claim(engine, "pacs", 10, lease_s=60).items == ()


def test_serve_with_a_corrupt_routed_model_stays_up_and_is_not_ready(tmp_path: Path, db_url: str) -> None:
    """The confirmed crash loop: `serve` whose routed model's weights are corrupt (sha256 matching)."""
    card = damaged_model(tmp_path / "corrupt", weights=corrupt_weights())
    metrics_port = free_port()
    node = NodeProcess(tmp_path / "node", db_url, roles=("worker",), sections={
        "pipeline": {"workers": 1, "routes": [{"model": str(card), "body_parts": ["CHEST"]}]},
        "metrics": {"host": "127.0.0.1", "port": metrics_port}}).start()
    try:
        while '"worker running"' not in node.log():  # the worker process is past loading its models
            assert node.process is not None and node.process.poll() is None, node.log()
            time.sleep(0.2)
        while True:
            try:
                status, body = get(metrics_port, "/readyz")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 503
        [models] = [c for c in body["checks"] if c["name"] == "models"]
        assert not models["ok"] and str(card) in models["detail"] and "do not load" in models["detail"]
        assert "model cannot be loaded" in node.log() and "child process died" not in node.log()
        assert "Traceback" not in node.log()
    finally:
        assert node.stop() == 0
