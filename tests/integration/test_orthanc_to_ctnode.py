"""Orthanc as the PACS: it sends a real study to ctnode, and every instance arrives byte for byte."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.db.engine import make_engine
from node.db.schema import Association, Instance
from tests.integration.orthanc import Orthanc
from tests.support import dataset_bytes, dicom_files, free_port, require_ct

pytestmark = pytest.mark.integration


@pytest.fixture
def orthanc(tmp_path: Path):
    node_port = free_port()
    server = Orthanc(tmp_path / "orthanc", modalities={"ctnode": ["CTNODE", "127.0.0.1", node_port]}).start()
    server.node_port = node_port  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_orthanc_sends_study_and_ctnode_keeps_it_byte_identical(orthanc: Orthanc, make_node, db_url, tmp_path):
    files = dicom_files(require_ct("head_phantom_philips_study"))
    uploaded = [orthanc.upload(path) for path in files]
    study_ids = {u["ParentStudy"] for u in uploaded}
    assert len(study_ids) == 1
    node = make_node(port=orthanc.node_port, allowed=[{"ae_title": "ORTHANC", "host": "127.0.0.1"}])

    job = orthanc.post("/modalities/ctnode/store", {"Resources": sorted(study_ids), "Synchronous": True})
    assert job.get("FailedInstancesCount", 0) == 0 and job["InstancesCount"] == len(files), job

    engine = make_engine(db_url)
    deadline = time.monotonic() + 30
    while True:  # Orthanc's job ends with the A-RELEASE-RP; the node closes the association's row just after
        with engine.connect() as conn:
            rows = conn.execute(select(Instance)).all()
            associations = conn.execute(select(Association)).all()
        if all(a.ended_at is not None for a in associations) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    engine.dispose()
    assert len(rows) == len(files)
    by_uid = {r.sop_instance_uid: r for r in rows}
    for instance_id in orthanc.get("/instances"):
        held = tmp_path / "held.dcm"
        held.write_bytes(orthanc.get_bytes(f"/instances/{instance_id}/file"))
        uid = str(pydicom.dcmread(held, stop_before_pixels=True).SOPInstanceUID)
        stored = node.data_dir / "store" / by_uid[uid].path
        assert dataset_bytes(stored) == dataset_bytes(held), f"instance {uid} differs from Orthanc's copy"
    assert {(a.calling_ae, a.outcome) for a in associations} == {("ORTHANC", "released")}
    assert sum(a.instances_stored for a in associations) == len(files)
