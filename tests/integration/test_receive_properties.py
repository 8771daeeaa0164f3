"""Property tests of the receiver (in process, real sockets): malformed data sets always get a status and never a
false Success, malformed PDUs never stop it from answering the next peer."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from node.config import AllowedPeer, DicomConfig, StorageConfig
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.db.schema import Instance
from node.dicom.scp import StorageSCP
from node.dicom.status import StoreStatus
from node.storage.store import InstanceStore
from tests.integration.dicom_client import associate, encode, send_raw
from tests.support import dataset_bytes, dicom_files, free_port, require_ct

pytestmark = pytest.mark.integration
_PROFILE = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ANSWERS = {int(s) for s in StoreStatus}


class Receiver:
    def __init__(self, root: Path) -> None:
        self.engine = make_engine(f"sqlite:///{root / 'ctnode.sqlite'}")
        upgrade(str(self.engine.url))
        self.store = InstanceStore(StorageConfig(data_dir=root, min_free_bytes=0))
        self.port = free_port()
        config = DicomConfig(host="127.0.0.1", port=self.port, pending_timeout_s=2,
                             allowed=[AllowedPeer(ae_title="STORESCU")])
        self.server = StorageSCP(config, self.store, self.engine).start()

    def versions(self, sop_instance_uid: str) -> list[Path]:
        """The stored files of every version of an instance (a resend of an older version adds none)."""
        with self.engine.connect() as conn:
            paths = conn.execute(select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid)).scalars()
            return [self.store.root / path for path in paths]


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    node = Receiver(tmp_path_factory.mktemp("fuzz"))
    yield node
    node.server.shutdown()


@pytest.fixture(scope="module")
def seed() -> bytes:
    ds = pydicom.dcmread(dicom_files(require_ct("head_ge_patient"))[0])
    ds.PixelData = ds.PixelData[:4096]  # small: the header is what the receiver reads
    ds.Rows, ds.Columns = 32, 64
    return encode(ds)


mutations = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "truncate"]), st.integers(0, 10**6),
                               st.binary(min_size=1, max_size=12)), min_size=1, max_size=6)


def mutate(data: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for op, at, blob in ops:
        at %= max(1, len(out))
        if op == "flip":
            out[at:at + len(blob)] = blob
        elif op == "cut":
            del out[at:at + len(blob) * 8]
        elif op == "insert":
            out[at:at] = blob
        else:
            del out[at:]
    return bytes(out)


@_PROFILE
@given(ops=mutations)
def test_malformed_data_sets_get_a_status_and_success_only_when_stored(receiver: Receiver, seed: bytes, ops):
    payload = mutate(seed, ops) or b"\x00"  # an empty data set would be a C-STORE that never ends, not a bad one
    sop = pydicom.dcmread(pydicom.filebase.DicomBytesIO(b"\x00" * 128 + b"DICM" + _meta() + seed),
                          stop_before_pixels=True).SOPInstanceUID
    with associate(receiver.port) as assoc:
        assert assoc.is_established
        status = send_raw(assoc, payload, sop)
        assert status in ANSWERS
        if status == StoreStatus.SUCCESS:  # some stored version holds exactly these bytes
            assert payload in [dataset_bytes(path) for path in receiver.versions(sop) if path.is_file()]
        assert assoc.send_c_echo().Status == 0x0000


def _meta() -> bytes:
    element = b"\x02\x00\x10\x00UI" + struct.pack("<H", 20) + b"1.2.840.10008.1.2.1\x00"
    return b"\x02\x00\x00\x00UL" + struct.pack("<HI", 4, len(element)) + element


@_PROFILE
@given(pdu_type=st.integers(0, 255), length=st.integers(0, 2**32 - 1), body=st.binary(max_size=256))
def test_malformed_pdus_never_stop_the_receiver(receiver: Receiver, pdu_type: int, length: int, body: bytes):
    with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
        sock.settimeout(30)
        try:
            sock.sendall(struct.pack(">BBL", pdu_type, 0, length) + body)
            sock.shutdown(socket.SHUT_WR)  # no more bytes: whatever the node makes of these, it must finish
            while sock.recv(4096):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass  # the node refused and closed before the client was done
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
    with associate(receiver.port) as assoc:
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
