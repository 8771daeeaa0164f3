"""Faults that cannot be staged through the CLI: the audit database unreachable while the receiver runs."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from node.config import AllowedPeer, DicomConfig, StorageConfig
from node.db.engine import make_engine
from node.dicom.scp import StorageSCP
from node.dicom.status import StoreStatus
from node.storage.store import InstanceStore
from tests.integration.dicom_client import associate, encode, send_raw
from tests.support import dicom_files, free_port, require_ct

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
