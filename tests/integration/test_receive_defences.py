"""Association defences, tested as a PACS or a stranger on the network would meet them: DCMTK's echoscu, raw sockets."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from node.db.schema import Association, AuditEvent
from tests.integration.dicom_client import (
    associate,
    encode,
    send_bytes,
    send_partial,
    send_partial_then_abort,
    wait_aborted,
)
from tests.integration.test_receive import _ct_dataset, db_rows
from tests.support import NodeProcess, require_tool

pytestmark = pytest.mark.integration

ABORT_INVALID_PDU_PARAMETER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])


def echoscu(node: NodeProcess, calling_ae: str = "ECHOSCU", called_ae: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("echoscu"), "-aet", calling_ae, "-aec", called_ae or node.ae_title,
                           "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=120)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the node sends before it closes the connection (60 s guard against a node that never does)."""
    sock.settimeout(60)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.parametrize(
    ("calling", "called", "allowed", "result", "source", "reason"),
    [
        ("INTRUDER", "CTNODE", [{"ae_title": "ECHOSCU"}], "Rejected Permanent", "Service User",
         "Calling AE Title Not Recognized"),
        ("ECHOSCU", "SOMEONEELSE", [{"ae_title": "ECHOSCU"}], "Rejected Permanent", "Service User",
         "Called AE Title Not Recognized"),
        ("ECHOSCU", "CTNODE", [{"ae_title": "ECHOSCU", "host": "10.20.30.0/24"}], "Rejected Permanent",
         "Service User", "Calling AE Title Not Recognized"),
    ],
)
def test_rejected_peer_receives_the_a_associate_rj(make_node, db_url, calling, called, allowed, result, source, reason):
    node = make_node(allowed=allowed)
    for _ in range(5):  # the RJ raced the socket close: every attempt must see the rejection itself
        answer = echoscu(node, calling, called)
        assert answer.returncode != 0
        text = answer.stdout + answer.stderr
        assert "Association Rejected" in text and "Peer aborted" not in text, text
        assert result in text and source in text and reason in text, text
    node.stop()
    assert {r.outcome for r in db_rows(db_url, Association)} == {"rejected"}


def test_per_ae_limit_rejects_transiently_with_local_limit_exceeded(make_node, db_url):
    node = make_node(allowed=[{"ae_title": "STORESCU", "max_associations": 1}, {"ae_title": "ECHOSCU"}])
    with associate(node.port) as held:
        assert held.is_established
        answer = echoscu(node, calling_ae="STORESCU")
        assert answer.returncode != 0
        text = answer.stdout + answer.stderr
        assert "Rejected Transient" in text and "Local Limit Exceeded" in text, text
        assert echoscu(node).returncode == 0  # other AEs are not limited by it
    assert echoscu(node, calling_ae="STORESCU").returncode == 0  # the slot is free again
    node.stop()
    rejected = db_rows(db_url, Association, Association.outcome == "rejected")
    assert len(rejected) == 1 and "holds 1 associations" in rejected[0].reject_reason


@pytest.mark.parametrize("processes", [1, 2])
def test_per_ae_limit_holds_when_many_associations_arrive_at_once(make_node, db_url, processes):
    """The limit is the node's, whichever receiver process each association reaches."""
    node = make_node(allowed=[{"ae_title": "STORESCU", "max_associations": 2}], processes=processes)
    barrier, release = threading.Barrier(10), threading.Event()
    established: list[bool] = []

    def request() -> None:
        barrier.wait()
        with associate(node.port) as assoc:
            established.append(assoc.is_established)
            release.wait(60)  # hold the slot until every request has been answered

    threads = [threading.Thread(target=request) for _ in range(10)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(established) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    release.set()
    for thread in threads:
        thread.join(60)
    assert sorted(established) == [False] * 8 + [True] * 2
    node.stop()
    assert len(db_rows(db_url, Association, Association.outcome == "rejected")) == 8


def test_the_association_limit_is_the_nodes_across_receiver_processes(make_node, db_url):
    node = make_node(max_associations=2, processes=2)
    with associate(node.port) as first, associate(node.port) as second:
        assert first.is_established and second.is_established
        answer = echoscu(node)
        text = answer.stdout + answer.stderr
        assert answer.returncode != 0 and "Rejected Transient" in text and "Local Limit Exceeded" in text, text
    deadline = time.monotonic() + 30  # the released associations are counted out as their connections close
    while (answer := echoscu(node)).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    node.stop()
    rejected = db_rows(db_url, Association, Association.outcome == "rejected")
    assert len(rejected) >= 1 and "the node already holds 2 associations" in rejected[0].reject_reason


def test_silent_connections_never_lock_out_a_sender(make_node, db_url):
    # More silent connections than both limits; before the gate each held an association slot for acse_timeout_s.
    node = make_node(max_associations=2, max_pending_connections=4, pending_timeout_s=600)
    idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(12)]
    for sock in idle[::2]:  # half of them start an A-ASSOCIATE-RQ and stop
        sock.sendall(struct.pack(">BBL", 0x01, 0, 68) + b"\x00\x01\x00\x00CTNODE")
    try:
        answer = echoscu(node)
        assert answer.returncode == 0, answer.stdout + answer.stderr
    finally:
        for sock in idle:
            sock.close()
    node.stop()
    dropped = db_rows(db_url, AuditEvent, AuditEvent.kind == "connection.refused")
    # the connections over the pending limit are refused as such (those closed by the test at the end may be
    # audited too, with their own reason, depending on when the node notices)
    refused = [e for e in dropped if "too many connections" in e.detail["reason"]]
    waiting = 4 * len(node.listening())  # each receiver process lets 4 wait
    assert sum(e.detail.get("repeats", 1) for e in refused) >= 12 - waiting, [e.detail for e in dropped]


def test_a_flood_of_refused_connections_costs_an_audit_row_per_window_not_one_each(make_node, db_url):
    node = make_node()
    for _ in range(150):
        with socket.create_connection(("127.0.0.1", node.port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            read_until_closed(sock)
    assert echoscu(node).returncode == 0
    node.stop()  # the refusals still counted are reported at shutdown
    rows = db_rows(db_url, AuditEvent, AuditEvent.kind == "connection.refused")
    assert len(rows) <= 2 * (1 + 150 // 100), [r.detail for r in rows]  # a window is 10 s; 150 probes take less
    assert sum(r.detail.get("repeats", 1) for r in rows) == 150, [r.detail for r in rows]
    assert {r.detail["host"] for r in rows} == {"127.0.0.1"}


def test_silent_connection_is_closed_after_the_pending_timer(make_node, db_url):
    node = make_node(pending_timeout_s=1)
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        assert read_until_closed(sock) == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x00])  # A-ABORT, then closed
    node.stop()
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "connection.refused")
    assert "no A-ASSOCIATE-RQ within 1 s" in event.detail["reason"]


def test_oversized_associate_request_is_refused_before_its_body_is_read(make_node, db_url):
    node = make_node()
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0x7FFFFFF0) + b"\x00" * 1000)  # claims 2 GiB, sends 1 kB
        assert read_until_closed(sock) == ABORT_INVALID_PDU_PARAMETER
    assert echoscu(node).returncode == 0
    node.stop()
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "connection.refused")
    assert "over the limit of 65536" in event.detail["reason"]


def test_first_pdu_that_is_not_an_associate_request_is_refused(make_node, db_url):
    node = make_node()
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_closed(sock) == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x01])  # unrecognised PDU
    node.stop()
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "connection.refused")
    assert "not an A-ASSOCIATE-RQ" in event.detail["reason"]


def test_oversized_p_data_is_aborted_before_its_body_is_read(make_node, db_url):
    node = make_node(max_pdu_bytes=65536)
    with associate(node.port) as assoc:
        assert assoc.is_established
        send_bytes(assoc, struct.pack(">BBL", 0x04, 0, 1 << 30) + b"\x00" * 4096)
        assert wait_aborted(assoc)
    node.stop()
    (row,) = db_rows(db_url, Association)
    assert row.outcome == "aborted"
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "association.aborted")
    assert "over the limit of 65536" in event.detail["reason"]


def _node_fds_into(node: NodeProcess, folder: Path) -> list[str]:
    assert node.process is not None
    fd_dir = Path(f"/proc/{node.process.pid}/fd")
    targets = []
    for fd in fd_dir.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    return [t for t in targets if t.startswith(str(folder))]


def test_slow_drip_hits_the_instance_deadline_and_its_spool_is_closed_and_kept(make_node, db_url):
    node = make_node(instance_deadline_s=1)
    ds = _ct_dataset()
    with associate(node.port) as assoc:
        send_partial(assoc, encode(ds), ds.SOPInstanceUID, fragments=3)  # command + 2 fragments, then silence
        assert wait_aborted(assoc)
    assert echoscu(node).returncode == 0
    assert _node_fds_into(node, node.data_dir / "incoming") == []
    assert list((node.data_dir / "incoming").iterdir()) == []
    node.stop()
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "association.aborted")
    assert "instance deadline of 1 s passed" in event.detail["reason"]
    (kept,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "spool.recovered")
    assert kept.association_id == event.association_id and Path(kept.path).is_file()


def test_association_deadline_aborts_a_peer_that_never_finishes(make_node, db_url):
    node = make_node(association_deadline_s=1)
    with associate(node.port) as assoc:
        assert assoc.is_established
        assert wait_aborted(assoc)
    node.stop()
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "association.aborted")
    assert "association deadline of 1 s passed" in event.detail["reason"]


def test_aborted_transfers_leave_no_open_spool_files(make_node, db_url):
    node = make_node()
    ds = _ct_dataset()
    for _ in range(5):
        with associate(node.port) as assoc:
            send_partial_then_abort(assoc, encode(ds), ds.SOPInstanceUID)
    assert echoscu(node).returncode == 0  # the node has seen every abort by now (one thread per association)
    assert _node_fds_into(node, node.data_dir / "incoming") == []
    assert list((node.data_dir / "incoming").iterdir()) == []
    node.stop()
    recovered = db_rows(db_url, AuditEvent, AuditEvent.kind == "spool.recovered")
    assert len(recovered) == 5 and all(e.association_id is not None for e in recovered)


def test_ipv4_peer_of_a_node_listening_on_ipv6_any_matches_its_ipv4_pin(make_node, db_url):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")  # the IPv4-mapped form only exists on a dual-stack socket
    node = make_node(host="::", allowed=[{"ae_title": "ECHOSCU", "host": "127.0.0.0/8"}])
    answer = echoscu(node)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    node.stop()
    (row,) = db_rows(db_url, Association)
    assert row.outcome == "released" and row.peer_host == "::ffff:127.0.0.1"
