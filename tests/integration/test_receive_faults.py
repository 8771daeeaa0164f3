"""Faults staged around an in-process receiver: the audit database unreachable, the disk full mid-transfer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.config import AllowedPeer, DicomConfig, StorageConfig
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.db.schema import Association, AuditEvent
from node.dicom.scp import StorageSCP
from node.dicom.status import StoreStatus
from node.storage.store import InstanceStore
from tests.integration.dicom_client import associate, encode, send_raw
from tests.support import dicom_files, free_port, require, require_ct

pytestmark = pytest.mark.integration


def test_unreachable_database_answers_out_of_resources_never_success(tmp_path: Path):
    # A real fault: a PostgreSQL URL on a loopback port where nothing listens (connection refused).
    engine = make_engine(f"postgresql://ctnode@127.0.0.1:{free_port()}/ctnode")
    store = InstanceStore(StorageConfig(data_dir=tmp_path, min_free_bytes=0))
    port = free_port()
    scp = StorageSCP(DicomConfig(host="127.0.0.1", port=port, allowed=[AllowedPeer(ae_title="STORESCU")]),
                     store, engine)
    server = scp.start()
    try:
        sources = dicom_files(require_ct("head_ge_patient"))[:3]
        with associate(port) as assoc:
            assert assoc.is_established
            for number, source in enumerate(sources, start=1):
                ds = pydicom.dcmread(source)
                status = send_raw(assoc, encode(ds), ds.SOPInstanceUID, message_id=number)
                assert status == StoreStatus.OUT_OF_RESOURCES
            assert assoc.send_c_echo().Status == 0x0000  # still serving
    finally:
        server.shutdown()
    assert list(store.root.rglob("*.dcm")) == []  # nothing half-indexed; the sender still holds the data
    assert list(store.incoming.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 3 MiB filesystem (tmpfs) where the store lives, so the disk really fills mid-transfer."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    require("a mountable tmpfs (root with CAP_SYS_ADMIN, as .ci/run runs)", mounted)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_while_spooling_answers_out_of_resources_audits_and_counts(tmp_path: Path, small_disk: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'ctnode.sqlite'}")
    upgrade(str(engine.url))
    store = InstanceStore(StorageConfig(data_dir=small_disk, min_free_bytes=0))
    port = free_port()
    scp = StorageSCP(DicomConfig(host="127.0.0.1", port=port, allowed=[AllowedPeer(ae_title="STORESCU")]),
                     store, engine)
    server = scp.start()
    sources = dicom_files(require_ct("head_ge_patient"))[:10]  # ~5 MB into 3 MiB
    try:
        with associate(port) as assoc:
            statuses = []
            for number, source in enumerate(sources, start=1):
                ds = pydicom.dcmread(source)
                statuses.append(send_raw(assoc, encode(ds), ds.SOPInstanceUID, message_id=number))
            assert assoc.send_c_echo().Status == 0x0000  # the association survived the full disk
    finally:
        server.shutdown()
    stored = statuses.count(StoreStatus.SUCCESS)
    assert 0 < stored < len(sources)
    assert set(statuses) == {StoreStatus.SUCCESS, StoreStatus.OUT_OF_RESOURCES}
    assert list(store.incoming.iterdir()) == []  # the partial spools gave their space back
    with engine.connect() as conn:
        refused = conn.execute(select(AuditEvent).where(AuditEvent.kind == "store.refused")).all()
        (row,) = conn.execute(select(Association)).all()
    assert len(refused) == len(sources) - stored and all("ENOSPC" in e.detail["reason"] for e in refused)
    assert (row.instances_stored, row.instances_failed, row.outcome) == (stored, len(sources) - stored, "released")
