"""The middle fragments of a data set go to the spool below pynetdicom; everything else still passes through it."""

from __future__ import annotations

import collections
import hashlib
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom.dul import DULServiceProvider
from sqlalchemy import select

from node.config import AllowedPeer, DicomConfig, StorageConfig
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.db.schema import Instance
from node.dicom.scp import StorageSCP
from node.storage.store import InstanceStore
from tests.support import dicom_files, free_port, require_ct, require_tool

pytestmark = pytest.mark.integration


def test_middle_fragments_skip_pynetdicom_and_every_byte_is_stored(tmp_path: Path, monkeypatch) -> None:
    decoded: collections.Counter[int] = collections.Counter()
    decode = DULServiceProvider._decode_pdu

    def counting(self: DULServiceProvider, data: bytearray) -> object:
        decoded[data[0]] += 1
        return decode(self, data)

    monkeypatch.setattr(DULServiceProvider, "_decode_pdu", counting)
    engine = make_engine(f"sqlite:///{tmp_path / 'ctnode.sqlite'}")
    upgrade(str(engine.url))
    store = InstanceStore(StorageConfig(data_dir=tmp_path / "data", min_free_bytes=0))
    port = free_port()
    scp = StorageSCP(DicomConfig(host="127.0.0.1", port=port, max_pdu_bytes=16384,
                                 allowed=[AllowedPeer(ae_title="STORESCU")]), store, engine)
    server = scp.start()
    sources = dicom_files(require_ct("head_ge_patient"))[:3]
    try:
        sent = subprocess.run([require_tool("storescu"), "-aet", "STORESCU", "-aec", "CTNODE", "127.0.0.1", str(port),
                               *map(str, sources)], capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert sent.returncode == 0, sent.stderr
    with engine.connect() as conn:
        rows = {row.sop_instance_uid: row for row in conn.execute(select(Instance)).all()}
    for source in sources:
        ds = pydicom.dcmread(source)
        stored = store.root / rows[ds.SOPInstanceUID].path
        # the data set after the File Meta, byte for byte as the sender encoded it
        sent_body = source.read_bytes()[_data_set_offset(source):]
        stored_body = stored.read_bytes()[_data_set_offset(stored):]
        assert hashlib.sha256(stored_body).hexdigest() == hashlib.sha256(sent_body).hexdigest()
    # 512x512 CT in 16 KiB PDUs: more than 30 P-DATA-TF PDUs per instance; pynetdicom decoded the command and
    # the first and last fragments of each (a fragment fills a PDU, so the command comes in a PDU of its own)
    fragments_per_instance = (sources[0].stat().st_size // 16384)
    assert fragments_per_instance > 30
    assert decoded[0x04] <= 3 * len(sources) + 1, decoded
    assert decoded[0x01] == 1 and decoded[0x05] == 1  # the association request and the release still went through


def _data_set_offset(path: Path) -> int:
    """Where the data set starts: after the preamble, the prefix and the File Meta group."""
    return 132 + 12 + pydicom.dcmread(path, stop_before_pixels=True).file_meta.FileMetaInformationGroupLength
