"""End to end with real Orthanc: a PACS sends CT studies, and without anyone touching ctnode the SR and overlays
appear in the same study, with the finding where the lesion was put, and the audit links every step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from sqlalchemy import Engine, select

from detector.io import read_headers
from detector.labels.lesions import planes_from_headers
from detector.labels.tid1500 import read_sr
from node.db.engine import make_engine
from node.db.schema import Delivery, Run
from node.events import RunStatus
from tests.integration.loop import (
    CHEST,
    HEAD,
    SentStudy,
    node_sections,
    orthanc_study,
    orthanc_with_node,
    results_in_orthanc,
    send_to_node,
    upload,
    wait_for_srs,
    write_study,
)
from tests.integration.orthanc import Orthanc
from tests.support import REPO, NodeProcess, free_port, wait_for_port

pytestmark = pytest.mark.integration

# Lesions the shipped models find (see detector/registry/models/*.json for their measured sensitivity, and
# tests/detector/test_detector_train_shipped.py for the same head lesion found by the model alone).
HEAD_LESION = {"diameter_mm": 12.0, "hu": 75.0, "seed": 109, "z_from": 3, "z_to": 25}
CHEST_LESION = {"diameter_mm": 14.0, "hu": 20.0, "seed": 1}


@pytest.fixture
def node_port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path: Path, node_port: int) -> Iterator[Orthanc]:
    server = orthanc_with_node(tmp_path / "orthanc", node_port)
    yield server
    server.stop()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def start_node(make_node, orthanc: Orthanc, node_port: int, **pipeline: object) -> NodeProcess:
    return make_node(port=node_port, allowed=[{"ae_title": orthanc.ae_title, "host": "127.0.0.1"}],
                     sections=node_sections(orthanc, **pipeline))


def runs_of(engine: Engine, study_instance_uid: str) -> list[Run]:
    with engine.connect() as conn:
        return list(conn.execute(select(Run).where(Run.study_instance_uid == study_instance_uid)
                                 .order_by(Run.version)).all())


def all_delivered(engine: Engine, study_instance_uid: str, timeout_s: float = 120) -> list[Run]:
    """Wait until every output of every finished run of the study is acknowledged; returns the runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            states = conn.execute(select(Delivery.state).where(Delivery.study_instance_uid == study_instance_uid)
                                  ).scalars().all()
        runs = runs_of(engine, study_instance_uid)
        if states and set(states) == {"delivered"} and all(r.status == RunStatus.DONE for r in runs):
            return runs
        time.sleep(0.2)
    raise AssertionError(f"deliveries of {study_instance_uid} not all acknowledged: {states}")


def sr_file(orthanc: Orthanc, instance_id: str, folder: Path) -> Path:
    path = folder / f"{instance_id}.dcm"
    path.write_bytes(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    return path


def assert_found_at_lesion(sr: Path, study: SentStudy) -> int:
    """The SR's findings, read as ``ctnode evaluate`` reads them, include one at the inserted lesion; their count."""
    assert study.lesion is not None
    findings = read_sr(sr, planes_from_headers(read_headers(study.files[0].parent).headers))
    assert findings, "the SR reports no finding, but a lesion was inserted"
    distances = [float(np.linalg.norm(np.subtract(f.centre_mm, study.lesion.centre_mm))) for f in findings]
    radius = max(study.lesion.radii_mm)
    assert min(distances) <= radius, f"nearest finding {min(distances):.1f} mm from the lesion (radius {radius} mm)"
    return len(findings)


# target -> (real series, inserted lesion, how the study became ready: the uneven GE head series, with gaps up to
# 7.4 mm, never passes the fast path's contiguity check, so the quiet timer makes it ready)
TARGETS = {"head": (HEAD, HEAD_LESION, "quiet:"), "chest": (CHEST, CHEST_LESION, "fast path:")}


@pytest.mark.parametrize("target", ["head", "chest"])
def test_orthanc_sends_a_study_and_gets_sr_and_overlays_back_in_the_same_study(
    target: str, orthanc: Orthanc, make_node, node_port: int, engine: Engine, tmp_path: Path
) -> None:
    folder, lesion, readiness = TARGETS[target]
    study = write_study(folder, tmp_path / target, f"e2e-{target}", lesion)
    node = start_node(make_node, orthanc, node_port)
    upload(orthanc, study.files)
    send_to_node(orthanc, [orthanc_study(orthanc, study.study_instance_uid)])
    wait_for_srs(orthanc, study.study_instance_uid, 1, 240, node.log)
    [run] = all_delivered(engine, study.study_instance_uid)
    found = results_in_orthanc(orthanc, study.study_instance_uid)
    assert len(found["CT"]) == len(study.files) and len(found["SR"]) == 1
    overlays = [i for key, items in found.items() if key not in ("CT", "SR") for i in items]
    sr_path = sr_file(orthanc, found["SR"][0]["id"], tmp_path)
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == study.study_instance_uid
    assert len(overlays) == assert_found_at_lesion(sr_path, study) + 1  # one SC per finding and the summary
    assert all(o["BurnedInAnnotation"] == "YES" for o in overlays)
    assert run.trigger.startswith(readiness)
    record = json.loads(node.cli("runs", "show", str(run.id), "--json").stdout)
    assert record["status"] == RunStatus.DONE and record["model"] == target
    assert record["instance_count"] == len(study.files) and len(record["inputs"]) == len(study.files)
    assert record["series_instance_uid"] == study.series_instance_uid and record["selection"]
    assert record["weights_sha256"] and record["model_version"] and record["routing"]
    assert {o["sop_instance_uid"] for o in record["outputs"]} == \
        {sr.SOPInstanceUID, *(o["SOPInstanceUID"] for o in overlays)}
    assert all(d["state"] == "delivered" and d["acknowledged_at"] for d in record["deliveries"])
    assert None not in record["durations_s"].values()
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{node.config['metrics']['port']}/metrics").read().decode()
    assert 'ctnode_runs{mode="live",status="done"} 1.0' in metrics
    assert 'ctnode_stage_duration_seconds_count{mode="live",stage="turnaround"} 1.0' in metrics
    ready = urllib.request.urlopen(f"http://127.0.0.1:{node.config['metrics']['port']}/readyz")
    assert ready.status == 200


def test_a_study_in_two_associations_is_one_run_within_the_quiet_time_and_two_versions_after(
    orthanc: Orthanc, make_node, node_port: int, engine: Engine, tmp_path: Path
) -> None:
    node = start_node(make_node, orthanc, node_port, quiet_s=12)
    for name, pause_s, versions in (("within", 2.0, 1), ("after", 16.0, 2)):
        study = write_study(CHEST, tmp_path / name, f"two-{name}", slices=slice(20, 44))
        ids = upload(orthanc, study.files)
        # the first association leaves a hole in the stack, so the fast path waits for the rest
        send_to_node(orthanc, ids[:8] + ids[11:])
        time.sleep(pause_s)
        send_to_node(orthanc, ids[8:11])
        found = wait_for_srs(orthanc, study.study_instance_uid, versions, 240, node.log)
        runs = runs_of(engine, study.study_instance_uid)
        assert [r.version for r in runs] == list(range(1, versions + 1)), [r.trigger for r in runs]
        assert runs[-1].instance_count == len(study.files) and runs[-1].status == RunStatus.DONE
        assert runs[-1].trigger.startswith("fast path")
        if versions == 2:
            assert runs[0].trigger.startswith("quiet:") and runs[0].instance_count == len(study.files) - 3
            assert runs[1].predecessor_id == runs[0].id
            srs = sorted((pydicom.dcmread(sr_file(orthanc, i["id"], tmp_path)) for i in found["SR"]),
                         key=lambda ds: "PredecessorDocumentsSequence" in ds)
            [predecessor] = srs[1].PredecessorDocumentsSequence
            assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
                srs[0].SOPInstanceUID


def _wait_for(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_killed_mid_inference_is_reclaimed_and_the_run_completes_once(
    orthanc: Orthanc, make_node, node_port: int, engine: Engine, tmp_path: Path
) -> None:
    node = start_node(make_node, orthanc, node_port, lease_s=6, heartbeat_s=1, batch_slices=1, threads=1)
    study = write_study(CHEST, tmp_path / "chest", "kill-worker")
    upload(orthanc, study.files)
    send_to_node(orthanc, [orthanc_study(orthanc, study.study_instance_uid)])

    def inferring() -> Run | None:
        runs = runs_of(engine, study.study_instance_uid)
        return runs[0] if runs and runs[0].inference_started_at is not None else None

    run = _wait_for(inferring, 120, "inference to start")
    worker_pid = int(run.worker.rsplit(":", 1)[1])
    os.kill(worker_pid, signal.SIGKILL)
    wait_for_srs(orthanc, study.study_instance_uid, 1, 240, node.log)
    [done] = all_delivered(engine, study.study_instance_uid)
    assert done.status == RunStatus.DONE and done.attempts == 2 and done.worker != run.worker
    record = json.loads(node.cli("runs", "show", str(done.id), "--json").stdout)
    assert [a["kind"] for a in record["audit"]] == ["run.queued", "run.reclaimed", "run.done"]
    time.sleep(2)  # nothing more arrives: exactly one SR and one set of overlays in the study
    found = results_in_orthanc(orthanc, study.study_instance_uid)
    assert {k: len(v) for k, v in found.items()} == {"CT": 64, "SR": 1, "OT": len(record["outputs"]) - 1}


def test_the_shipped_defaults_take_a_newcomer_from_orthanc_to_a_result_in_orthanc(tmp_path: Path) -> None:
    """`ctnode init` + deploy/orthanc.json, as the README's walkthrough uses them (only the ports moved)."""
    data = tmp_path / "ctnode"
    init = subprocess.run([sys.executable, "-m", "node", "init", str(data)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    config = yaml.safe_load((data / "ctnode.yaml").read_text())
    node_port, orthanc_dicom, metrics_port = free_port(), free_port(), free_port()
    config["dicom"]["port"] = node_port
    config["delivery"]["destinations"][0]["port"] = orthanc_dicom
    config["metrics"]["port"] = metrics_port
    (data / "ctnode.yaml").write_text(yaml.safe_dump(config))
    shipped = json.loads((REPO / "deploy" / "orthanc.json").read_text())
    assert shipped["DicomModalities"]["ctnode"] == [config["dicom"]["ae_title"], "127.0.0.1", 11112]
    orthanc = Orthanc(tmp_path / "orthanc", ae_title=shipped["DicomAet"],
                      modalities={"ctnode": [config["dicom"]["ae_title"], "127.0.0.1", node_port]})
    orthanc.dicom_port = orthanc.config["DicomPort"] = orthanc_dicom
    orthanc.start()
    node = subprocess.Popen([sys.executable, "-m", "node", "serve", "-c", str(data / "ctnode.yaml")],
                            stdout=(tmp_path / "node.log").open("wb"), stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for_port(node_port, process=node)
        study = write_study(CHEST, tmp_path / "chest", "newcomer", slices=slice(24, 40))
        upload(orthanc, study.files)
        send_to_node(orthanc, [orthanc_study(orthanc, study.study_instance_uid)])
        found = wait_for_srs(orthanc, study.study_instance_uid, 1, 240,
                             lambda: (tmp_path / "node.log").read_text(errors="replace"))
        assert len(found["CT"]) == 16 and len(found["SR"]) == 1
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0
        orthanc.stop()


def test_stopping_the_node_mid_inference_gives_the_run_back_and_a_restart_finishes_it(
    orthanc: Orthanc, make_node, node_port: int, engine: Engine, tmp_path: Path
) -> None:
    node = start_node(make_node, orthanc, node_port, batch_slices=1, threads=1)
    study = write_study(CHEST, tmp_path / "chest", "stop-node")
    upload(orthanc, study.files)
    send_to_node(orthanc, [orthanc_study(orthanc, study.study_instance_uid)])
    _wait_for(lambda: (runs_of(engine, study.study_instance_uid) or [None])[0] is not None
              and runs_of(engine, study.study_instance_uid)[0].inference_started_at is not None, 120, "inference")
    started = time.monotonic()
    assert node.stop() == 0
    assert time.monotonic() - started < 15, "shutdown waited for the inference"
    [run] = runs_of(engine, study.study_instance_uid)
    assert run.status == RunStatus.QUEUED and run.attempts == 0 and run.claim_token is None
    node.start()  # same data directory and database
    wait_for_srs(orthanc, study.study_instance_uid, 1, 240, node.log)
    [done] = all_delivered(engine, study.study_instance_uid)
    assert done.status == RunStatus.DONE and done.attempts == 1
    record = json.loads(node.cli("runs", "show", str(done.id), "--json").stdout)
    assert [a["kind"] for a in record["audit"]] == ["run.queued", "run.released", "run.done"]
