"""The receive stage's reading of a data set: Specific Character Set, strict UIDs; who may associate; how the
guarded socket reads PDUs and the spool's File Meta is written."""

from __future__ import annotations

import copy
import hashlib
import io
import multiprocessing
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pynetdicom.association
import pynetdicom.dul
import pytest
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from node.config import AllowedPeer, DicomConfig
from node.dicom import chunked, reactor, seams
from node.dicom.access import AccessPolicy
from node.dicom.contexts import add_scp_contexts
from node.dicom.connection_guard import ConnectionGate, GateLimits, GuardedSocket
from node.dicom.occupancy import Occupancy, Seat
from node.dicom.receive import Received, read_header, uid_problem
from node.logging import phi_registry
from tests.support import dicom_files, require_ct, require_tool


def _received(path: Path) -> Received:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    data = path.read_bytes()
    return Received(path, hashlib.sha256(data).hexdigest(), len(data), str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                    str(ds.file_meta.TransferSyntaxUID), None)


@pytest.mark.parametrize(("charset", "name", "description"), [
    ("ISO_IR 100", "MÜLLER^JÖRG", "Schädel nativ"),
    ("ISO_IR 192", "ŁUKASZ^ŻÓŁW", "Schädel nativ"),
    ("ISO_IR 144", "ИВАНОВ^ИВАН", "Голова"),
])
def test_text_is_decoded_with_the_specific_character_set_and_names_are_scrubbed(tmp_path: Path, charset, name,
                                                                                description):
    ds = pydicom.dcmread(dicom_files(require_ct("head_ge_patient"))[0])
    ds.SpecificCharacterSet = charset
    ds.PatientName, ds.StudyDescription = name, description
    path = tmp_path / "x.dcm"
    ds.save_as(path)
    header = read_header(_received(path))
    assert (header["PatientName"], header["StudyDescription"]) == (name, description)
    assert phi_registry.scrub(f"failed for {name} today") == "failed for [redacted] today"


@pytest.mark.parametrize(("value", "ok"), [
    ("1.2.840.10008.5.1.4.1.1.2", True), ("0", True), ("", False), (" 1.2", False), ("1.2 ", False),
    ("1.2\x00", False), ("1..2", False), (".1", False), ("1.2.", False), ("1.a", False), ("1." + "9" * 62, True),
    ("1." + "9" * 63, False), ("1.2\n", False),
])
def test_uid_grammar(value, ok):
    assert (uid_problem(value) is None) is ok


def test_ip_pins_are_addresses_or_networks_and_ipv4_mapped_peers_match_them():
    policy = AccessPolicy(DicomConfig(allowed=[
        AllowedPeer(ae_title="PACS", host="10.1.2.3"), AllowedPeer(ae_title="CT", host="192.168.0.0/16"),
        AllowedPeer(ae_title="V6", host="fd00::/8"),
    ]))
    assert policy.check("PACS", "CTNODE", "10.1.2.3") is None
    assert policy.check("PACS", "CTNODE", "::ffff:10.1.2.3") is None  # what a socket listening on "::" reports
    assert policy.check("PACS", "CTNODE", "10.1.2.4") is not None
    assert policy.check("CT", "CTNODE", "::ffff:192.168.7.9") is None
    assert policy.check("CT", "CTNODE", "192.169.0.1") is not None
    assert policy.check("V6", "CTNODE", "fd12::1") is None
    assert policy.check("V6", "CTNODE", "not an address") is not None
    with pytest.raises(ValueError, match="not an IP address or CIDR network"):
        AllowedPeer(ae_title="PACS", host="pacs.example.org")


def _pdata_pdu(value: bytes, last: bool) -> bytes:
    """A P-DATA-TF PDU holding one PDV (data set fragment) of ``value``."""
    item = struct.pack(">LBB", len(value) + 2, 1, 0x02 if last else 0x00) + value
    return struct.pack(">BBL", 0x04, 0, len(item)) + item


def _read_like_pynetdicom(transport: AssociationSocket) -> bytes:
    """One PDU as pynetdicom's DUL reads it from its transport: the 6-byte header, then the body."""
    header = transport.recv(6)
    return bytes(header + transport.recv(struct.unpack(">BBL", header)[2]))


@pytest.fixture
def guarded() -> Iterator[tuple[GuardedSocket, socket.socket]]:
    """A guarded socket and its peer, connected."""
    limits = GateLimits(max_pending=4, pending_timeout_s=5, max_request_pdu_bytes=65536, max_pdata_pdu_bytes=1 << 20,
                        association_deadline_s=60, instance_deadline_s=60)
    ours, peer = socket.socketpair()
    with ours, peer:
        yield GuardedSocket(ours, limits, ("127.0.0.1", 0)), peer


def test_guarded_socket_reads_a_pdu_body_in_few_calls_and_never_past_it(guarded) -> None:
    """pynetdicom's transport, read through the guard, takes a large PDU's body in a few socket reads (its own
    loop reads 4 KiB per call); the next PDU stays in the kernel, where select sees it."""
    guard, peer = guarded
    transport = AssociationSocket(Association(AE(), MODE_ACCEPTOR), client_socket=guard)  # type: ignore[arg-type]
    guard.read_for(transport)
    first, second = _pdata_pdu(bytes(range(256)) * 256, last=False), _pdata_pdu(b"\x01" * 1000, last=True)
    peer.sendall(first + second)
    calls = 0
    ours = guard._sock

    class Counting:
        def recv(self, size: int, flags: int = 0) -> bytes:
            nonlocal calls
            calls += 1
            return ours.recv(size, flags)

    guard._sock = Counting()  # type: ignore[assignment]
    assert _read_like_pynetdicom(transport) == first
    assert calls < 17 // 2, calls  # pynetdicom alone would call recv 17 times for this PDU
    guard._sock = ours
    assert select.select([guard], [], [], 0)[0], "the next PDU must still be visible to select"
    assert guard.instance_started is not None  # a data set is arriving
    assert _read_like_pynetdicom(transport) == second
    assert guard.instance_started is None  # the last fragment was seen


def _captured_request(tmp_path: Path) -> bytes:
    """The A-ASSOCIATE-RQ DCMTK's echoscu sends (read off a plain listening socket)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = subprocess.Popen(["echoscu", "-to", "5", "-aet", "ECHOSCU", "-aec", "CTNODE", "127.0.0.1",
                                   str(server.getsockname()[1])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn, _ = server.accept()
            with conn:
                data = b""
                while len(data) < 6 or len(data) < 6 + struct.unpack(">BBL", data[:6])[2]:
                    chunk = conn.recv(65536)
                    assert chunk
                    data += chunk
        finally:
            client.kill()
            client.wait()
    return data


def test_gate_decodes_a_repeated_request_once_and_an_undecodable_one_every_time(tmp_path: Path, monkeypatch) -> None:
    require_tool("echoscu")
    request = _captured_request(tmp_path)
    gate = ConnectionGate(GateLimits(4, 5, 65536, 65536, 60, 60), lambda *_: None)
    decoded = []
    real = A_ASSOCIATE_RQ.decode
    monkeypatch.setattr(A_ASSOCIATE_RQ, "decode", lambda pdu, data: (decoded.append(1), real(pdu, data))[1])
    try:
        assert gate._undecodable(request) is None
        assert gate._undecodable(request) is None
        assert len(decoded) == 1
        assert request[74] == 0x10  # the application context item, after the 68 fixed bytes
        broken = request[:76] + b"\xff\xf0" + request[78:]  # ... declaring more bytes than the PDU holds
        assert all(gate._undecodable(broken) is not None for _ in range(2))
        assert len(decoded) == 3
    finally:
        gate.stop()


@pytest.mark.parametrize("uids", [
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),  # even-length instance UID
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.33.4", "1.2.840.10008.1.2"),  # odd lengths: padded with NUL
    ("1.2.840.10008.5.1.4.1.1.2", " 1.2.3 ", "1.2.840.10008.1.2.1"),  # not a plain UID: pydicom's own path
])
def test_spool_file_meta_is_byte_identical_to_pydicoms(uids: tuple[str, str, str]) -> None:
    expected, ours = io.BytesIO(), io.BytesIO()
    write_file_meta_info(expected, create_file_meta(sop_class_uid=uids[0], sop_instance_uid=uids[1],
                                                    transfer_syntax=uids[2]))
    chunked._write_file_meta_info(ours, chunked._create_file_meta(sop_class_uid=uids[0], sop_instance_uid=uids[1],
                                                                  transfer_syntax=uids[2]))
    assert ours.getvalue() == expected.getvalue()


def _waiting(wait: Any) -> threading.Thread:
    """``wait`` running in a thread of its own (it waits up to the patched IDLE_WAIT_S of a minute)."""
    thread = threading.Thread(target=wait, args=(0.001,), daemon=True)
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()  # nothing to do: still waiting (pynetdicom's own sleep would have ended)
    return thread


def test_the_reactors_wait_for_work_not_for_a_timer(guarded, monkeypatch) -> None:
    """An accepted association's DUL reactor wakes for data on its socket and for a primitive queued to send; its
    association reactor wakes for a decoded message. A wait of a minute ends at once when there is work."""
    guard, peer = guarded
    monkeypatch.setattr(reactor, "IDLE_WAIT_S", 60.0)
    assoc = Association(AE(), MODE_ACCEPTOR)
    guard.waker = reactor.wake_on_work(assoc, guard, guard.buffered)
    dul_wait, association_wait = seams._waits[assoc.dul], seams._waits[assoc]

    thread = _waiting(dul_wait)
    peer.sendall(_pdata_pdu(b"\x00" * 100, last=True))
    thread.join(5)
    assert not thread.is_alive()
    guard.recv(1 << 16)  # the PDU read: nothing waits any more

    thread = _waiting(dul_wait)
    assoc.dul.send_pdu(P_DATA())  # what the DIMSE layer does with a C-STORE response
    thread.join(5)
    assert not thread.is_alive() and len(assoc.dul.to_provider_queue.queue) == 1
    dul_wait(0.001)  # a primitive still waits to be sent: no wait at all
    assoc.dul.to_provider_queue.queue.clear()

    thread = _waiting(association_wait)
    assoc.dimse.msg_queue.put((1, "a decoded message"))
    thread.join(5)
    assert not thread.is_alive()
    guard.close()
    assert not os.path.exists(f"/proc/self/fd/{guard.waker.fd}")  # the eventfd is closed with the socket


def test_pynetdicom_sleeps_as_before_in_every_other_thread() -> None:
    """The clock stands in for ``time`` inside pynetdicom's reactor modules; a thread it does not know sleeps."""
    seams.install(chunked.SPOOLING)
    assert isinstance(pynetdicom.dul.time, seams._Clock) and pynetdicom.dul.time.monotonic is time.monotonic
    started = time.monotonic()
    pynetdicom.association.time.sleep(0.05)
    assert time.monotonic() - started >= 0.05


def test_each_association_gets_its_own_contexts_around_shared_uids() -> None:
    """pynetdicom deep-copies the server's contexts per association: ours share the UID objects (not rebuilt
    through pydicom's validation) while each association can still change its own contexts."""
    ae = AE()
    add_scp_contexts(ae)
    contexts = seams.SharedUIDContexts(ae.supported_contexts)
    copied = copy.deepcopy(contexts)
    assert len(copied) == len(contexts) == len(ae.supported_contexts) > 100
    for original, twin in zip(contexts, copied):
        assert twin is not original and twin.context_id == original.context_id
        assert twin.abstract_syntax is original.abstract_syntax
        assert twin.transfer_syntax == original.transfer_syntax and twin._transfer_syntax is not original._transfer_syntax
        assert all(a is b for a, b in zip(twin.transfer_syntax, original.transfer_syntax))
    copied[0].context_id, copied[0].result = 7, 0
    copied[0]._transfer_syntax.pop()
    assert contexts[0].context_id is None and contexts[0].result is None
    assert len(contexts[0].transfer_syntax) == len(copied[0].transfer_syntax) + 1


def _hold_two(seat: Seat, entered: Any) -> None:
    """In a spawned receiver-like process: hold two PACS associations (until killed)."""
    seat.enter("PACS")
    seat.enter("PACS")
    entered.set()
    time.sleep(60)


def test_open_associations_are_counted_node_wide_and_a_dead_process_leaves_none() -> None:
    occupancy = Occupancy(3, ["PACS"])
    mine = occupancy.seat(0)
    spawn = multiprocessing.get_context("spawn")
    entered = spawn.Event()
    sibling = spawn.Process(target=_hold_two, args=(occupancy.seat(1), entered))
    sibling.start()
    try:
        assert entered.wait(60)
        assert mine.enter("OTHER") == (2, 0)  # the sibling's two are seen; OTHER has no limit of its own
        assert mine.enter("PACS") == (3, 2)
        mine.leave("PACS")
        mine.leave("OTHER")
    finally:
        sibling.kill()  # dies holding two
        sibling.join(30)
    occupancy.seat(1)  # its replacement takes the seat, empty
    assert mine.enter("PACS") == (0, 0)


@pytest.mark.parametrize("value", ["1.2.840.10008.1.2.1", "1.2.3.04", "1.2.abc", "", "1." + "2" * 70, " 1.2.3 "])
def test_remembered_uid_validation_answers_as_before(value: str, monkeypatch) -> None:
    """The remembering validators give pydicom's and pynetdicom's own answers, for the conformance setting of
    the moment, and answer a repeated value from memory."""
    from pydicom import valuerep
    from pynetdicom import _config, _validators

    # the libraries' own validators (an in-process receiver earlier in the run may have installed ours)
    original_pynetdicom, original_pydicom = _validators.validate_ui, valuerep.validate_length_and_type_and_regex
    monkeypatch.setitem(_config.VALIDATORS, "UI", original_pynetdicom)
    monkeypatch.setitem(valuerep.VALIDATORS, "UI", original_pydicom)
    expected = {enforced: (monkeypatch.setattr(_config, "ENFORCE_UID_CONFORMANCE", enforced),
                           original_pynetdicom(value))[1] for enforced in (False, True)}
    expected_pydicom = original_pydicom("UI", value)
    seams.remember_uid_validation()
    seams.remember_uid_validation()  # idempotent: one layer of memory
    assert _config.VALIDATORS["UI"] is not original_pynetdicom
    for enforced in (False, True, False):
        monkeypatch.setattr(_config, "ENFORCE_UID_CONFORMANCE", enforced)
        assert _config.VALIDATORS["UI"](value) == expected[enforced]
    assert valuerep.VALIDATORS["UI"]("UI", value) == expected_pydicom
    assert valuerep.VALIDATORS["UI"]("UI", value) == expected_pydicom
    assert valuerep.VALIDATORS["UI"].remembered.cache_info().hits >= 1
    assert _config.VALIDATORS["UI"].remembered.cache_info().hits >= 1
