"""Delivery to Orthanc as the PACS: results land in the original study, and outages, refusals and crashes lose nothing."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image
from pydicom.dataset import Dataset
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from detector.findings import Finding
from node.cli.deliveries import app as deliveries_app
from node.config import Settings
from node.db.schema import AuditEvent, Delivery, DeliveryAttempt
from node.delivery import enqueue, get_delivery, run_delivery
from node.events import AttemptOutcome, AuditKind, DeliveryState
from node.reports import AlgorithmIdentity, ReportOptions, build_report_objects, write_report_objects
from node.reports.captions import key_slice
from node.reports.render import BOX_RGB
from tests.integration.orthanc import Orthanc
from tests.node.reports.conftest import algorithm, chest_series, chest_tumour  # noqa: F401  (fixtures)
from tests.node.reports.conftest import CHEST, run_on
from tests.support import REPO, require_ct

pytestmark = pytest.mark.integration

RUNS = 8  # report runs built on the chest CT; each is an SR and two Secondary Captures


@pytest.fixture(scope="module")
def run_files(chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity,  # noqa: F811
              tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """The Part 10 files of RUNS runs reporting the chest tumour (SR, overlay SC, summary SC per run)."""
    root = tmp_path_factory.mktemp("runs")
    return [[w.path for w in write_report_objects(build_report_objects(
        run_on(f"run-{n}", chest_series, [chest_tumour], algorithm), ReportOptions()), root / str(n))]
        for n in range(RUNS)]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc")
    server.config["DicomCheckCalledAet"] = True  # a wrong called AE title is refused, as a strict PACS does
    yield server.start()
    server.stop()


def delivery_settings(db_url: str, data_dir: Path, destinations: list[dict[str, Any]], **policy: Any) -> Settings:
    """Settings with quick retries, so that tests wait for outcomes, not for backoff."""
    delivery = {"destinations": destinations, "backoff_initial_s": 0.2, "backoff_max_s": 1.0, "poll_interval_s": 0.1,
                "lease_s": 2.0, "max_attempts": 50, "acse_timeout_s": 10, **policy}
    return Settings(database={"url": db_url}, storage={"data_dir": data_dir}, delivery=delivery)


def pacs(orthanc: Orthanc, name: str = "pacs", ae_title: str | None = None) -> dict[str, Any]:
    return {"name": name, "ae_title": ae_title or orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}


@contextmanager
def delivering(settings: Settings) -> Iterator[None]:
    """run_delivery in a thread, as `ctnode serve` runs it; stopped and joined on exit."""
    stop = threading.Event()
    thread = threading.Thread(target=run_delivery, args=(settings, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 120.0) -> None:
    """Poll until ``condition`` holds; the deadline only keeps a broken run from hanging CI."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.05)


def states(engine: Engine, destination: str | None = None) -> list[str]:
    query = select(Delivery.state).order_by(Delivery.id)
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def all_in(engine: Engine, state: DeliveryState, destination: str | None = None) -> Callable[[], bool]:
    return lambda: (found := states(engine, destination)) != [] and set(found) == {str(state)}


def enqueue_runs(engine: Engine, runs: list[list[Path]], destinations: list[str], first_run: int = 0) -> list[int]:
    return [i for n, files in enumerate(runs, first_run) for path in files for i in enqueue(engine, path, destinations, n)]


def orthanc_series(orthanc: Orthanc) -> dict[str, list[int]]:
    """Modality -> instance count of each series Orthanc holds, across all studies."""
    found: dict[str, list[int]] = {}
    for series_id in orthanc.get("/series"):
        series = orthanc.get(f"/series/{series_id}")
        found.setdefault(series["MainDicomTags"]["Modality"], []).append(len(series["Instances"]))
    return {modality: sorted(counts) for modality, counts in found.items()}


def test_results_arrive_inside_the_original_study_and_render_the_box(
    orthanc: Orthanc, engine: Engine, db_url: str, tmp_path: Path, run_files: list[list[Path]],
    chest_tumour: Finding,  # noqa: F811
) -> None:
    ct_files = sorted(require_ct(CHEST, "series_5mm_lung_kernel").glob("*.dcm"))
    study_ids = {orthanc.upload(path)["ParentStudy"] for path in ct_files}
    assert len(study_ids) == 1
    ids = enqueue_runs(engine, run_files[:1], ["pacs"])
    assert len(ids) == 3

    with delivering(delivery_settings(db_url, tmp_path, [pacs(orthanc)])):
        wait_for(all_in(engine, DeliveryState.DELIVERED), "the SR and both SCs delivered")

    assert orthanc.get("/studies") == sorted(study_ids), "no new study: the results joined the original one"
    study = orthanc.get(f"/studies/{study_ids.pop()}")
    by_modality = {orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"]: len(orthanc.get(f"/series/{s}")["Instances"])
                   for s in study["Series"]}
    assert by_modality == {"CT": len(ct_files), "SR": 1, "OT": 2}
    for delivery_id in ids:
        row = get_delivery(engine, delivery_id)
        assert row is not None and row.attempts == 1 and row.last_status == 0 and row.acknowledged_at is not None
        assert [(a.outcome, a.status) for a in row.attempt_log] == [(str(AttemptOutcome.SUCCESS), 0)]
    assert enqueue_runs(engine, run_files[:1], ["pacs"]) == ids, "enqueueing again adds no rows"

    overlay = pydicom.dcmread(run_files[0][1], stop_before_pixels=True)
    [instance] = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": overlay.SOPInstanceUID}})
    png = orthanc.get_bytes(f"/instances/{instance}/preview")
    (tmp_path / "orthanc-preview.png").write_bytes(png)
    if os.environ.get("CTNODE_TEST_ARTEFACTS"):
        Path(os.environ["CTNODE_TEST_ARTEFACTS"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["CTNODE_TEST_ARTEFACTS"]) / "orthanc-preview.png").write_bytes(png)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape == (overlay.Rows, overlay.Columns, 3)
    x1, y1, x2, y2 = (int(v) for v in key_slice(chest_tumour).box_px)
    middle_row, middle_column = (y1 + y2) // 2, (x1 + x2) // 2
    edges = [pixels[middle_row, x1 - 1], pixels[middle_row, x2], pixels[y1 - 1, middle_column], pixels[y2, middle_column]]
    assert all(tuple(p) == BOX_RGB for p in edges), f"box edges as Orthanc renders them: {edges}"
    inside = pixels[middle_row, middle_column]
    assert inside[0] == inside[1] == inside[2], "inside the box the CT stays grey"
    box = np.argwhere(np.all(pixels == BOX_RGB, axis=-1))
    assert box[:, 0].min() >= y1 - 40 and box[:, 1].min() >= x1 - 40, "nothing box-coloured far from the finding"


def test_orthanc_down_during_delivery_then_back(
    orthanc: Orthanc, engine: Engine, db_url: str, tmp_path: Path, run_files: list[list[Path]]
) -> None:
    with delivering(delivery_settings(db_url, tmp_path, [pacs(orthanc)])):
        first = enqueue_runs(engine, run_files[:1], ["pacs"])
        wait_for(all_in(engine, DeliveryState.DELIVERED), "the first run delivered")
        orthanc.stop()
        second = enqueue_runs(engine, run_files[1:2], ["pacs"], first_run=1)

        def failed_twice() -> bool:
            with engine.connect() as conn:
                return conn.execute(select(func.min(Delivery.attempts)).where(Delivery.id.in_(second))).scalar_one() >= 2

        wait_for(failed_twice, "two failed attempts on every object while Orthanc is down")
        assert set(states(engine)) == {str(DeliveryState.DELIVERED), str(DeliveryState.PENDING)}
        orthanc.start()
        wait_for(all_in(engine, DeliveryState.DELIVERED), "everything delivered once Orthanc is back")

    for delivery_id in second:
        row = get_delivery(engine, delivery_id)
        assert row is not None
        outcomes = [a.outcome for a in row.attempt_log]
        assert len(outcomes) >= 3 and set(outcomes[:-1]) == {str(AttemptOutcome.FAILURE)}
        assert outcomes[-1] == str(AttemptOutcome.SUCCESS) and row.attempts == len(outcomes)
        assert all(a.status is None and a.error for a in row.attempt_log[:-1]), "no response: the error says why"
    assert len(orthanc.get("/instances")) == len(first) + len(second), "each object stored once"
    assert orthanc_series(orthanc) == {"SR": [1, 1], "OT": [2, 2]}


def silent_peer() -> socket.socket:
    """A listening TCP socket that never accepts: connections complete and then hear nothing, like a hung PACS."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def test_refusing_and_hung_destinations_do_not_stop_another(
    orthanc: Orthanc, engine: Engine, db_url: str, tmp_path: Path, run_files: list[list[Path]]
) -> None:
    hung = silent_peer()
    destinations = [pacs(orthanc), pacs(orthanc, "wrong", "NOTORTHANC"),
                    {"name": "hung", "ae_title": "HUNG", "host": "127.0.0.1", "port": hung.getsockname()[1]}]
    # the hung peer holds its worker for the whole ACSE timeout, longer than this test waits for the others
    settings = delivery_settings(db_url, tmp_path, destinations, max_attempts=3, acse_timeout_s=600)
    with delivering(settings), closing(hung):  # the listener closes first, which releases the hung worker
        enqueue_runs(engine, run_files[:2], ["pacs", "wrong", "hung"])
        wait_for(all_in(engine, DeliveryState.DELIVERED, "pacs"), "everything delivered to the good destination")
        wait_for(all_in(engine, DeliveryState.DEAD, "wrong"), "the refusing destination dead-lettered")
        assert set(states(engine, "hung")) == {str(DeliveryState.PENDING)}
        with engine.connect() as conn:
            assert conn.execute(select(func.sum(Delivery.attempts)).where(Delivery.destination == "hung")).scalar() == 0

    assert orthanc_series(orthanc) == {"SR": [1, 1], "OT": [2, 2]}
    with engine.connect() as conn:
        dead = conn.execute(select(Delivery).where(Delivery.destination == "wrong")).all()
        attempts = conn.execute(select(DeliveryAttempt.outcome, DeliveryAttempt.error)
                                .join(Delivery).where(Delivery.destination == "wrong")).all()
        letters = conn.execute(select(AuditEvent).where(AuditEvent.kind == str(AuditKind.DELIVERY_DEAD_LETTER))).all()
    assert len(dead) == 6 and {d.attempts for d in dead} == {3}
    # Orthanc closes the socket right after A-ASSOCIATE-RJ, so pynetdicom sometimes sees an abort first
    refused = {"rejected", "aborted"}
    assert len(attempts) == 18, attempts
    assert all(a.outcome == "failure" and a.error.rsplit(" ", 1)[-1] in refused for a in attempts), set(attempts)
    assert sorted(e.sop_instance_uid for e in letters) == sorted(d.sop_instance_uid for d in dead)

    config = tmp_path / "ctnode.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": db_url}, "storage": {"data_dir": str(tmp_path)},
                                      "logging": {"format": "json"}}))
    runner = CliRunner()
    target = dead[0].id
    result = runner.invoke(deliveries_app, ["retry", str(target), "--config", str(config)])
    assert result.exit_code == 0, result.output
    requeued = get_delivery(engine, target)
    assert requeued is not None and requeued.state == DeliveryState.PENDING and requeued.attempts == 0
    assert len(requeued.attempt_log) == 3, "the attempt history stays"
    again = runner.invoke(deliveries_app, ["retry", str(target), "--config", str(config)])
    assert again.exit_code == 1 and "not dead-lettered" in again.output
    listed = runner.invoke(deliveries_app, ["list", "--state", "dead", "--json", "--config", str(config)])
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)) == 5
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).where(AuditEvent.kind == str(AuditKind.DELIVERY_REQUEUED))).scalar() == 1


class DeliveryProcess:
    """`python -m node.cli.deliveries run`: the delivery loop as its own process."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "delivery.yaml"
        self.config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
        self.log = folder / "delivery.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DeliveryProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "node.cli.deliveries", "run", "-c", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def test_killed_sender_resumes_without_loss_or_duplicates(
    orthanc: Orthanc, engine: Engine, db_url: str, tmp_path: Path, run_files: list[list[Path]]
) -> None:
    ids = enqueue_runs(engine, run_files, ["pacs"])
    settings = delivery_settings(db_url, tmp_path, [pacs(orthanc)], batch_size=len(ids))
    first = DeliveryProcess(settings, tmp_path / "first").start()
    try:
        wait_for(lambda: str(DeliveryState.DELIVERED) in states(engine), "the first object of the batch delivered")
        first.kill()
    finally:
        first.stop()
    delivered_before = states(engine).count(str(DeliveryState.DELIVERED))
    assert 0 < delivered_before < len(ids), "killed in the middle of the batch"

    second = DeliveryProcess(settings, tmp_path / "second").start()
    try:
        wait_for(all_in(engine, DeliveryState.DELIVERED), "the restarted sender delivers the rest")
    finally:
        second.stop()

    assert len(orthanc.get("/instances")) == len(ids), "every object once, none lost"
    assert orthanc_series(orthanc) == {"SR": [1] * RUNS, "OT": [2] * RUNS}
    with engine.connect() as conn:
        successes = conn.execute(select(DeliveryAttempt.delivery_id, func.count()).where(
            DeliveryAttempt.outcome == str(AttemptOutcome.SUCCESS)).group_by(DeliveryAttempt.delivery_id)).all()
    assert sorted(successes) == [(i, 1) for i in sorted(ids)], "one acknowledged attempt per object"
