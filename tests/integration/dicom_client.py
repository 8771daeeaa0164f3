"""A pynetdicom SCU that can send what storescu refuses to: data sets without or with bad UIDs, garbage, partial P-DATA."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage


@contextmanager
def associate(port: int, calling_ae: str = "STORESCU", called_ae: str = "CTNODE") -> Iterator[Association]:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


@contextmanager
def _reactor_paused(assoc: Association) -> Iterator[None]:
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()
        # Wait for the reactor to wake: pynetdicom's next pause (e.g. send_c_echo) would otherwise see the stale
        # _is_paused flag, and the waking reactor could take that operation's response.
        deadline = time.monotonic() + 5
        while assoc._is_paused and assoc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.0001)


def encode(ds: Dataset) -> bytes:
    """The data set alone, explicit VR little endian, as it travels in P-DATA."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _c_store(payload: bytes, sop_instance_uid: str, sop_class_uid: str, message_id: int) -> C_STORE:
    """A C-STORE request whose data set is ``payload`` as it is, whatever the command's UIDs say."""
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class_uid
    request.AffectedSOPInstanceUID = sop_instance_uid
    request.Priority = 2
    request.DataSet = BytesIO(payload)
    return request


def send_raw(assoc: Association, payload: bytes, sop_instance_uid: str, sop_class_uid: str = CTImageStorage,
             message_id: int = 1) -> int:
    """C-STORE ``payload`` as the data set with the given command UIDs; returns the response status."""
    request = _c_store(payload, sop_instance_uid, sop_class_uid, message_id)
    context = assoc._get_valid_context(sop_class_uid, ExplicitVRLittleEndian, "scu")
    with _reactor_paused(assoc):  # as pynetdicom's own send_c_store does, so the reactor does not take the reply
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    assert response is not None, "no C-STORE response"
    return int(response.Status)


def _p_data(assoc: Association, payload: bytes, sop_instance_uid: str, message_id: int) -> list:
    """The P-DATA PDUs (command first, then the data set in 16 KB fragments) of a CT C-STORE of ``payload``."""
    context = assoc._get_valid_context(CTImageStorage, ExplicitVRLittleEndian, "scu")
    message = C_STORE_RQ()
    message.primitive_to_message(_c_store(payload, sop_instance_uid, CTImageStorage, message_id))
    return list(message.encode_msg(context.context_id, 16382))


def send_partial_then_abort(assoc: Association, payload: bytes, sop_instance_uid: str, fraction: float = 0.5) -> None:
    """Send the command and part of the data set's P-DATA, then A-ABORT: a transfer cut mid-instance."""
    fragments = _p_data(assoc, payload, sop_instance_uid, 99)
    with _reactor_paused(assoc):
        for primitive in fragments[: max(2, int(len(fragments) * fraction))]:
            assoc.dul.send_pdu(primitive)
    assoc.abort()


def send_partial(assoc: Association, payload: bytes, sop_instance_uid: str, fragments: int = 2) -> None:
    """Send the C-STORE command and the first ``fragments`` P-DATA PDUs of its data set, then nothing more."""
    with _reactor_paused(assoc):
        for primitive in _p_data(assoc, payload, sop_instance_uid, 98)[:fragments]:
            assoc.dul.send_pdu(primitive)


def send_bytes(assoc: Association, data: bytes) -> None:
    """Write raw bytes on the association's connection (e.g. a PDU header that lies about its length)."""
    with _reactor_paused(assoc):
        assoc.dul.socket.socket.sendall(data)


def wait_aborted(assoc: Association, timeout_s: float = 60.0) -> bool:
    """Whether the peer aborted (or closed) the association within ``timeout_s`` (a guard, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if assoc.is_aborted or not assoc.is_alive():
            return True
        time.sleep(0.05)
    return False


def send_store_without_data_set(assoc: Association, sop_instance_uid: str) -> int:
    """A C-STORE-RQ whose command says no data set follows (pynetdicom's SCP ignores it); returns the status."""
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = sop_instance_uid
    request.Priority = 2
    request.DataSet = BytesIO(b"")
    context = assoc._get_valid_context(CTImageStorage, ExplicitVRLittleEndian, "scu")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    message.command_set.CommandDataSetType = 0x0101
    with _reactor_paused(assoc):
        for primitive in message.encode_msg(context.context_id, 16382):
            assoc.dul.send_pdu(primitive)
        _, response = assoc.dimse.get_msg(block=True)
    assert response is not None, "no C-STORE response"
    return int(response.Status)
