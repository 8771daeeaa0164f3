"""Separate role processes sharing one database and one storage volume: a receiver killed mid-association keeps every
instance it acknowledged, and 2 receivers + 3 workers process 20 concurrent studies exactly once."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from node.db.engine import make_engine
from node.db.schema import Delivery, Instance, Run
from node.events import RunStatus
from tests.integration.loop import CHEST, SR_CLASS, write_study
from tests.integration.orthanc import Orthanc
from tests.support import free_port, require_tool

pytestmark = pytest.mark.integration


def test_receiver_killed_mid_association_keeps_every_acknowledged_instance(make_node, db_url: str,
                                                                           tmp_path: Path) -> None:
    study = write_study(CHEST, tmp_path / "chest", "kill-receiver")
    node = make_node(roles=("receiver",))
    acknowledged: list[str] = []
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CTNODE")
    assert assoc.is_established
    for n, path in enumerate(study.files):
        if n == 25:
            node.kill()  # kill -9 in the middle of the association
        try:
            status = assoc.send_c_store(pydicom.dcmread(path))
        except (RuntimeError, OSError):
            break
        if "Status" in status and status.Status == 0x0000:
            acknowledged.append(path.name)
        else:
            break
    ae.shutdown()
    assert 25 <= len(acknowledged) < len(study.files)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        stored = {r.sop_instance_uid: r for r in conn.execute(select(Instance)).all()}
    engine.dispose()
    for name in acknowledged:
        data = (study.files[0].parent / name).read_bytes()
        uid = str(pydicom.dcmread(study.files[0].parent / name, stop_before_pixels=True).SOPInstanceUID)
        assert uid in stored, f"acknowledged instance {uid} is not indexed"
        on_disk = node.data_dir / "store" / stored[uid].path
        assert on_disk.is_file() and hashlib.sha256(on_disk.read_bytes()).hexdigest() == stored[uid].sha256
        assert len(data) > 0


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # the database several machines share
def test_two_receivers_and_three_workers_process_twenty_studies_exactly_once(
    make_node, db_url: str, tmp_path: Path
) -> None:
    orthanc = Orthanc(tmp_path / "orthanc").start()
    try:
        shared: dict[str, Any] = {
            "storage": {"data_dir": str(tmp_path / "shared"), "min_free_bytes": 0},
            "delivery": {"destinations": [{"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                                           "port": orthanc.dicom_port}],
                         "default_destinations": ["pacs"], "poll_interval_s": 0.2},
            "pipeline": {"workers": 1, "quiet_s": 30, "poll_interval_s": 0.3, "lease_s": 120, "threads": 1},
            "metrics": {"port": 0},
        }
        port = free_port()
        receivers = [make_node(f"receiver-{i}", port=port, roles=("receiver",), sections=shared) for i in range(2)]
        for i in range(3):
            make_node(f"worker-{i}", port=port, roles=("worker",), sections=shared)
        make_node("delivery", port=port, roles=("delivery",), sections=shared)
        studies = [write_study(CHEST, tmp_path / f"study-{n}", f"scale-{n}", slices=slice(28, 36)) for n in range(20)]
        senders = [threading.Thread(target=_storescu, args=(port, study.files)) for study in studies]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        deadline = time.monotonic() + 600
        engine = make_engine(db_url)
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                runs = conn.execute(select(Run)).all()
                states = conn.execute(select(Delivery.state)).scalars().all()
            if len(runs) >= 20 and all(r.status == RunStatus.DONE for r in runs) and states and \
                    set(states) == {"delivered"}:
                break
            time.sleep(0.5)
        with engine.connect() as conn:
            deliveries = conn.execute(select(Delivery)).all()
        engine.dispose()
        assert sorted(r.study_instance_uid for r in runs) == sorted(s.study_instance_uid for s in studies)
        assert all(r.status == RunStatus.DONE and r.attempts == 1 and r.version == 1 for r in runs)
        assert len({r.worker for r in runs}) >= 2, "the three workers did not share the queue"
        assert len(deliveries) == len({d.sop_instance_uid for d in deliveries})
        srs = [i for i in orthanc.get("/instances?expand") if i["MainDicomTags"].get("SOPClassUID") == SR_CLASS
               or orthanc.get(f"/instances/{i['ID']}/simplified-tags").get("SOPClassUID") == SR_CLASS]
        per_study = Counter(orthanc.get(f"/instances/{i['ID']}/simplified-tags")["StudyInstanceUID"] for i in srs)
        assert per_study == Counter({s.study_instance_uid: 1 for s in studies})
        assert len(orthanc.get("/instances")) == len(deliveries), "Orthanc holds duplicates or misses outputs"
        assert all(r.process is not None and r.process.poll() is None for r in receivers)
    finally:
        orthanc.stop()


def _storescu(port: int, files: tuple[Path, ...]) -> None:
    subprocess.run([require_tool("storescu"), "-aet", "STORESCU", "-aec", "CTNODE", "127.0.0.1", str(port),
                    *map(str, files)], check=True, capture_output=True, timeout=300)
