"""The HL7 listener as a RIS meets it: python-hl7's own MLLP client sends ORU^R01 reports, reads the ACKs.

In-process listener on both database backends for the cases, and `ctnode serve` for the wiring and its log.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from sqlalchemy import Engine, insert, select

from node.config import Hl7Config
from node.db.engine import make_engine
from node.db.schema import AuditEvent, PatientIdentifier, ReportLabel, Study, StudyReport
from node.events import AuditKind, ReportLabelValue
from node.hl7.listener import Hl7Listener
from node.labels.radiology_reports import study_labels
from node.logging import configure_logging
from tests.support import NodeProcess, free_port

pytestmark = pytest.mark.integration

HEAD_UID = "1.2.826.0.1.3680043.8.498.201"
CHEST_UID = "1.2.826.0.1.3680043.8.498.202"
NAME, MRN, BIRTH, ACCESSION = "PRIVATE^PATRICIA^Q", "MRN-8675309", "19610704", "ACC-5550001"
REPORT = ["FINDINGS: No acute intracranial haemorrhage.", "Incidental 5 mm nodule at the left lung apex."]


def oru(control_id: str = "MSG0001", accession: str = ACCESSION, lines: list[str] | None = None, status: str = "F",
        kind: str = "ORU^R01^ORU_R01", segments: tuple[str, ...] = ("PID", "OBR", "OBX"), charset: str = "",
        zds: str | None = None) -> str:
    """An ORU^R01 as a RIS writes it: one OBX line of type TX per report line."""
    parts = [f"MSH|^~\\&|RIS|HOSPITAL|CTNODE|SITE|20250101120000||{kind}|{control_id}|P|2.5||||||{charset}"]
    if "PID" in segments:
        parts.append(f"PID|1||{MRN}^^^HOSPITAL^MR||{NAME}||{BIRTH}|F")
    if "OBR" in segments:
        parts.append(f"OBR|1|PLC-{control_id}|{accession}|CTHEAD^CT head||||||||||||||||||20250101115900|||{status}")
    if zds is not None:
        parts.append(f"ZDS|{zds}^RIS^Application^DICOM")
    if "OBX" in segments:
        parts += [f"OBX|{i}|TX|REP^Report text||{line}||||||{status}" for i, line in enumerate(lines or REPORT, 1)]
    return "\r".join(parts) + "\r"


async def _send(port: int, blocks: list[bytes]) -> list[hl7.Message]:
    reader, writer = await open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    acks = []
    try:
        for block in blocks:
            writer.writeblock(block)
            await writer.drain()
            acks.append(await asyncio.wait_for(reader.readmessage(), 30))
    finally:
        writer.close()
    return acks


def send(port: int, *messages: str | bytes) -> list[hl7.Message]:
    """Send each message over one MLLP connection (python-hl7's client) and return the ACKs."""
    return asyncio.run(_send(port, [m if isinstance(m, bytes) else m.encode() for m in messages]))


def msa(ack: hl7.Message) -> tuple[str, str]:
    segment = ack.segment("MSA")
    return str(segment(1)), str(segment(2))


@pytest.fixture
def logs() -> Iterator[Callable[[], str]]:
    """The JSON log lines the node's pipeline writes during the test (the real handler, into a buffer)."""
    configure_logging("json", "DEBUG")
    buffer = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer.getvalue
    configure_logging("json", "INFO")


@pytest.fixture
def listener(engine: Engine, tmp_path: Path, logs: Callable[[], str]) -> Iterator[Hl7Listener]:
    config = Hl7Config(enabled=True, port=0, timeout_s=1.0, max_message_bytes=4096)
    listener = Hl7Listener(config, tmp_path, engine).start()
    yield listener
    listener.stop()


def audits(engine: Engine, kind: AuditKind) -> list[AuditEvent]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditEvent).where(AuditEvent.kind == str(kind)).order_by(AuditEvent.id)))


def reports(engine: Engine) -> list[StudyReport]:
    with engine.connect() as conn:
        return list(conn.execute(select(StudyReport).order_by(StudyReport.id)))


def assert_no_identifier_in(text: str) -> None:
    for value in (NAME, "PRIVATE", "PATRICIA", MRN, BIRTH, ACCESSION):
        assert value not in text, f"{value} in the log"


def test_a_known_accession_is_acknowledged_aa_and_labels_its_study(
        listener: Hl7Listener, engine: Engine, add_study: Callable[..., int], logs: Callable[[], str]) -> None:
    study = add_study(HEAD_UID, ACCESSION)
    message = oru()
    (ack,) = send(listener.port, message)
    assert msa(ack) == ("AA", "MSG0001")
    msh = ack.segment("MSH")
    assert [str(msh(i)) for i in (3, 4, 5, 6, 9)] == ["CTNODE", "SITE", "RIS", "HOSPITAL", "ACK^R01^ACK"]
    assert str(msh(10)) and str(msh(10)) != "MSG0001"
    (report,) = reports(engine)
    assert (report.study_id, report.study_instance_uid, report.source, report.control_id, report.result_status,
            report.current) == (study, HEAD_UID, "hl7", "MSG0001", "F", True)
    assert report.text == "\n".join(REPORT)
    assert Path(report.path).read_bytes() == message.encode()
    assert Path(report.path).parent.parent == listener.folder
    with engine.connect() as conn:
        labels = {r.finding_type: (r.value, r.evidence) for r in conn.execute(select(ReportLabel))}
        kept = set(conn.execute(select(PatientIdentifier.value).where(PatientIdentifier.study_id == study)).scalars())
    assert labels == {"hyperdense_lesion": ("negative", REPORT[0]), "lung_nodule": ("positive", REPORT[1])}
    assert {NAME, MRN, BIRTH} <= kept
    (event,) = audits(engine, AuditKind.REPORT_RECORDED)
    assert event.study_instance_uid == HEAD_UID
    assert event.detail["labels"] == ["hyperdense_lesion:negative", "lung_nodule:positive"]
    log = logs()
    assert '"hl7 report recorded"' in log
    assert_no_identifier_in(log)


def test_a_study_instance_uid_in_zds_or_an_obx_matches_the_study(
        listener: Hl7Listener, engine: Engine, add_study: Callable[..., int]) -> None:
    add_study(HEAD_UID)
    chest = add_study(CHEST_UID)
    by_zds = oru("MSG-Z", accession="ACC-NOT-KEPT-1", zds=HEAD_UID)
    by_obx = oru("MSG-O", accession="ACC-NOT-KEPT-2").replace(
        "OBX|1|", f"OBX|1|ST|113014^Study Instance UID^DCM||{CHEST_UID}||||||F\rOBX|2|", 1)
    acks = send(listener.port, by_zds, by_obx)
    assert [msa(a) for a in acks] == [("AA", "MSG-Z"), ("AA", "MSG-O")]
    first, second = reports(engine)
    assert (first.study_instance_uid, second.study_instance_uid, second.study_id) == (HEAD_UID, CHEST_UID, chest)
    assert CHEST_UID not in second.text


def test_unknown_and_ambiguous_studies_and_missing_text_get_ae(
        listener: Hl7Listener, engine: Engine, add_study: Callable[..., int], logs: Callable[[], str]) -> None:
    add_study(HEAD_UID, "ACC-TWICE")
    add_study(CHEST_UID, "ACC-TWICE")
    acks = send(listener.port, oru("MSG-U"), oru("MSG-A", accession="ACC-TWICE"),
                oru("MSG-T", accession="ACC-TWICE", segments=("PID", "OBR")))
    assert [msa(a) for a in acks] == [("AE", "MSG-U"), ("AE", "MSG-A"), ("AE", "MSG-T")]
    assert [str(a.segment("MSA")(3)) for a in acks] == [
        "no study with its accession number", "its accession number matches 2 studies",
        "no report text (no OBX of type TX, FT or ST with a value)"]
    assert [(r.study_id, r.current, r.control_id) for r in reports(engine)] == [(None, False, "MSG-U"),
                                                                                  (None, False, "MSG-A")]
    refused = audits(engine, AuditKind.REPORT_REFUSED)
    assert [e.detail["reason"] for e in refused] == [str(a.segment("MSA")(3)) for a in acks]
    assert all(e.path and Path(e.path).is_file() for e in refused)
    assert_no_identifier_in(logs() + json.dumps([e.detail for e in refused]))


@pytest.mark.parametrize(("message", "reason"), [
    (oru("MSG-W", kind="ADT^A01^ADT_A01"), "message type ADT^A01^ADT_A01 is not ORU^R01"),
    (oru("MSG-P", segments=("OBR", "OBX")), "no PID segment"),
    (oru("MSG-B", segments=("PID", "OBX")), "no OBR segment"),
    (oru(""), "no message control ID (MSH-10)"),
    ("this is not HL7 at all", "not an HL7 message: it does not begin with an MSH segment"),
])
def test_malformed_messages_get_ar(listener: Hl7Listener, engine: Engine, add_study: Callable[..., int],
                                   message: str, reason: str) -> None:
    add_study(HEAD_UID, ACCESSION)
    (ack,) = send(listener.port, message)
    code, control = msa(ack)
    assert code == "AR" and control == (message.split("|")[9] if message.startswith("MSH") else "")
    assert ack.unescape(str(ack.segment("MSA")(3))) == reason
    assert reports(engine) == []
    (event,) = audits(engine, AuditKind.REPORT_REFUSED)
    assert (event.detail["reason"], event.detail["ack"], event.detail["stage"]) == (reason, "AR", "message")
    assert Path(event.path).read_bytes() == message.encode()


def test_non_utf8_text_is_read_by_msh18_or_latin1_or_refused(
        listener: Hl7Listener, engine: Engine, add_study: Callable[..., int]) -> None:
    add_study(HEAD_UID, ACCESSION)
    lines = ["Réunion: no acute intracranial hæmorrhage.", "No subdural haematoma."]
    latin1 = oru("MSG-L1", lines=lines).encode("latin-1")
    declared = oru("MSG-D", lines=lines, charset="8859/1").encode("latin-1")
    c1 = oru("MSG-C1", lines=lines).encode("latin-1").replace("é".encode("latin-1"), b"\x81")
    lies = oru("MSG-U8", lines=lines, charset="UNICODE UTF-8").encode("latin-1")
    acks = send(listener.port, latin1, declared, c1, lies)
    assert [msa(a) for a in acks] == [("AA", "MSG-L1"), ("AA", "MSG-D"), ("AR", "MSG-C1"), ("AR", "MSG-U8")]
    assert [r.text.splitlines()[0] for r in reports(engine)] == [lines[0], lines[0]]
    assert study_labels(engine, reports(engine)[-1].study_id) == {"hyperdense_lesion": ReportLabelValue.NEGATIVE}


def test_a_correction_supersedes_the_final_report(
        listener: Hl7Listener, engine: Engine, add_study: Callable[..., int]) -> None:
    study = add_study(HEAD_UID, ACCESSION)
    acks = send(listener.port, oru("MSG-F", lines=["No intracranial haemorrhage."]),
                oru("MSG-C", status="C", lines=["Addendum: small acute subdural haematoma along the falx."]))
    assert [msa(a) for a in acks] == [("AA", "MSG-F"), ("AA", "MSG-C")]
    final, correction = reports(engine)
    assert (final.current, final.result_status, correction.current, correction.result_status) == (False, "F", True, "C")
    assert study_labels(engine, study) == {"hyperdense_lesion": ReportLabelValue.POSITIVE}
    assert audits(engine, AuditKind.REPORT_RECORDED)[-1].detail["superseded"] == [final.id]


def _raw(port: int, data: bytes, close: bool = True) -> bytes:
    """Send ``data`` on a plain socket; what the listener answers before it closes (b'' when it just closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        if close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_bad_framing_closes_the_connection_with_an_audit_and_the_listener_goes_on(
        listener: Hl7Listener, engine: Engine, add_study: Callable[..., int], logs: Callable[[], str]) -> None:
    add_study(HEAD_UID, ACCESSION)
    started = time.monotonic()
    assert _raw(listener.port, b"GET / HTTP/1.1\r\n\r\n\x1c\r") == b""  # no 0x0B start block
    assert _raw(listener.port, b"\x0b" + b"X" * 6000 + b"\x1c\r") == b""  # over max_message_bytes
    assert _raw(listener.port, b"\x0b" + oru().encode()[:80]) == b""  # the peer closed inside a message
    assert _raw(listener.port, b"\x0b" + oru().encode()[:80], close=False) == b""  # incomplete for timeout_s
    assert time.monotonic() - started < 20
    refused = audits(engine, AuditKind.REPORT_REFUSED)
    assert [(e.detail["stage"], e.detail["reason"]) for e in refused] == [
        ("mllp", "block does not begin with 0x0B"), ("mllp", "message over 4096 bytes"),
        ("mllp", "connection closed inside a message (no 0x1C 0x0D end)"), ("mllp", "message incomplete after 1 s")]
    log = logs()
    assert log.count('"hl7 connection closed: bad framing"') == 4
    assert_no_identifier_in(log)
    (ack,) = send(listener.port, oru("MSG-AFTER"))
    assert msa(ack) == ("AA", "MSG-AFTER")


def test_ctnode_serve_runs_the_listener_in_its_receiver(make_node: Callable[..., NodeProcess], db_url: str) -> None:
    port = free_port()
    node = make_node(sections={"hl7": {"enabled": True, "host": "127.0.0.1", "port": port},
                               "pipeline": {"workers": 0}, "metrics": {"port": 0}})
    deadline = time.monotonic() + 30
    while '"hl7 listening"' not in node.log():
        assert time.monotonic() < deadline and node.process is not None and node.process.poll() is None, node.log()
        time.sleep(0.1)
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            study = conn.execute(insert(Study).values(study_instance_uid=HEAD_UID).returning(Study.id)).scalar_one()
            conn.execute(insert(PatientIdentifier).values(study_id=study, value=ACCESSION))
        acks = send(port, oru("MSG-SERVE"), oru("MSG-UNKNOWN", accession="ACC-5550002"))
        assert [msa(a) for a in acks] == [("AA", "MSG-SERVE"), ("AE", "MSG-UNKNOWN")]
        assert study_labels(engine, study) == {"hyperdense_lesion": ReportLabelValue.NEGATIVE,
                                               "lung_nodule": ReportLabelValue.POSITIVE}
        assert list((node.data_dir / "hl7").glob("*/*.hl7"))
    finally:
        engine.dispose()
    assert node.stop() == 0
    log = node.log()
    assert '"hl7 report recorded"' in log and '"hl7 report matched no study"' in log
    assert_no_identifier_in(log)
    assert "ACC-5550002" not in log


def test_a_database_failure_is_acknowledged_ae_not_aa(tmp_path: Path, logs: Callable[[], str]) -> None:
    broken = make_engine(f"sqlite:///{tmp_path / 'never-migrated.sqlite'}")  # no tables: every write fails
    listener = Hl7Listener(Hl7Config(enabled=True, port=0), tmp_path, broken).start()
    try:
        (ack,) = send(listener.port, oru("MSG-DB"))
    finally:
        listener.stop()
        broken.dispose()
    assert msa(ack) == ("AE", "MSG-DB")
    assert "database error" in str(ack.segment("MSA")(3))
    assert len(list((tmp_path / "hl7").glob("*/*.hl7"))) == 1  # kept on disk all the same
    log = logs()
    assert '"hl7 report not recorded: database error"' in log
    assert_no_identifier_in(log)


def test_stopping_closes_an_idle_connection_at_once(engine: Engine, tmp_path: Path) -> None:
    listener = Hl7Listener(Hl7Config(enabled=True, port=0), tmp_path, engine).start()
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        time.sleep(0.2)  # accepted, waiting for a message
        started = time.monotonic()
        listener.stop()
        assert time.monotonic() - started < 5
        assert sock.recv(1) == b""
