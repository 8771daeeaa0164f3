"""Receiving with real clients (DCMTK storescu/echoscu, a pynetdicom SCU): durability, bad input, access, audit."""

from __future__ import annotations

import contextlib
import json
import os
from copy import deepcopy
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.db.engine import make_engine
from node.db.schema import Association, AuditEvent, Instance
from node.dicom.status import StoreStatus
from tests.integration.dicom_client import associate, encode, send_partial_then_abort, send_raw
from tests.support import (
    NodeProcess,
    dataset_bytes,
    dicom_files,
    free_port,
    require_ct,
    require_tool,
    wait_for_port,
    without_trailing_padding,
)

pytestmark = pytest.mark.integration

# storescu option that proposes each WG04 variant's transfer syntax.
PROPOSE = {"REF": "-x=", "RLE": "-xr", "JPLL": "-xs", "JLSL": "-xt", "JLSN": "-xu", "J2KR": "-xv", "J2KI": "-xw"}


def storescu(node: NodeProcess, *files: Path, calling_ae: str = "STORESCU", called_ae: str | None = None,
             propose: str = "-x=") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("storescu"), "-aet", calling_ae, "-aec", called_ae or node.ae_title, propose,
         "127.0.0.1", str(node.port), *map(str, files)], capture_output=True, text=True, timeout=300)


def db_rows(url: str, model: type, *where: object) -> list:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(model).where(*where)).all()
    engine.dispose()
    return rows


def stored_files(node: NodeProcess) -> list[Path]:
    return sorted((node.data_dir / "store").rglob("*.dcm"))


def test_echo_is_answered_and_audited(make_node, db_url):
    node = make_node()
    result = subprocess.run([require_tool("echoscu"), "-aec", "CTNODE", "127.0.0.1", str(node.port)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    node.stop()
    rows = db_rows(db_url, Association)
    assert [(r.calling_ae, r.outcome) for r in rows] == [("ECHOSCU", "released")]


def test_real_series_stored_byte_identical_and_listed(make_node, db_url):
    series = require_ct("head_ge_patient")
    sources = sorted(p for p in series.iterdir() if p.is_file())
    node = make_node()
    result = storescu(node, *sources)
    assert result.returncode == 0, result.stderr

    stored = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in stored_files(node)}
    assert len(stored) == len(sources)
    for source in sources:
        uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(stored[uid]) == without_trailing_padding(dataset_bytes(source)), source.name

    listing = node.cli("studies", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    studies = json.loads(listing.stdout)
    assert len(studies) == 1 and studies[0]["instances"] == len(sources)
    assert studies[0]["sources"] == ["STORESCU@127.0.0.1"]
    shown = json.loads(node.cli("studies", "show", studies[0]["study_instance_uid"], "--json").stdout)
    assert shown["series"][0]["instances"] == len(sources)
    assert shown["bytes"] == sum(p.stat().st_size for p in stored.values())

    node.stop()
    (assoc,) = db_rows(db_url, Association)
    assert (assoc.outcome, assoc.instances_stored, assoc.instances_failed) == ("released", len(sources), 0)


@pytest.fixture
def reference_scp(tmp_path: Path):
    """DCMTK storescp in bit-preserving mode: writes each data set exactly as it came off the wire."""
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen([require_tool("storescp"), "+B", "+xa", "-aet", "CTNODE", "-od", str(out), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process=process)
    yield port, out
    process.terminate()
    process.wait(timeout=20)


def test_compressed_transfer_syntaxes_stored_as_sent(make_node, db_url, reference_scp):
    root = require_ct("compressed_singles", "WG04")
    node = make_node()
    reference_port, reference_dir = reference_scp
    for variant, flag in PROPOSE.items():
        for source in sorted((root / variant).iterdir()):
            result = storescu(node, source, propose=flag)
            assert result.returncode == 0, f"{source}: {result.stderr}"
            for old in reference_dir.iterdir():
                old.unlink()
            subprocess.run([require_tool("storescu"), "-aec", "CTNODE", flag, "127.0.0.1", str(reference_port),
                            str(source)], check=True, capture_output=True, timeout=60)
            (wire,) = reference_dir.iterdir()
            sent = dataset_bytes(wire)  # what storescu put on the wire for this file
            syntax = str(pydicom.dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            rows = db_rows(db_url, Instance, Instance.transfer_syntax_uid == syntax)
            assert any(dataset_bytes(node.data_dir / "store" / r.path) == sent for r in rows), f"{source} altered"
    node.stop()
    assert {r.transfer_syntax_uid for r in db_rows(db_url, Instance)} == {
        "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    }


@pytest.mark.parametrize(
    ("calling", "called", "allowed", "reason"),
    [
        ("INTRUDER", "CTNODE", [{"ae_title": "STORESCU"}], "calling AE 'INTRUDER' is not on the allow-list"),
        ("STORESCU", "CTNODE", [{"ae_title": "STORESCU", "host": "10.20.30.40"}], "not allowed from host 127.0.0.1"),
        ("STORESCU", "SOMEONEELSE", [{"ae_title": "STORESCU"}], "called AE title 'SOMEONEELSE' is not ours"),
    ],
)
def test_association_rejected_and_audited(make_node, db_url, calling, called, allowed, reason):
    source = next(p for p in sorted(require_ct("head_ge_patient").iterdir()) if p.is_file())
    node = make_node(allowed=[*allowed, {"ae_title": "ECHOSCU"}])
    result = storescu(node, source, calling_ae=calling, called_ae=called)
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr and "Peer aborted" not in result.stderr, result.stderr
    assert stored_files(node) == []
    with associate(node.port, calling_ae="ECHOSCU") as assoc:  # the node keeps serving allowed peers
        assert assoc.is_established
    node.stop()
    rejected, accepted = sorted(db_rows(db_url, Association), key=lambda r: r.id)
    assert rejected.outcome == "rejected" and reason in rejected.reject_reason
    assert (accepted.calling_ae, accepted.outcome) == ("ECHOSCU", "released")
    (event,) = db_rows(db_url, AuditEvent)
    assert event.kind == "association.rejected" and event.association_id == rejected.id


def _ct_dataset() -> pydicom.Dataset:
    source = next(p for p in sorted(require_ct("head_ge_patient").iterdir()) if p.is_file())
    return pydicom.dcmread(source)


def test_bad_datasets_get_precise_status_quarantine_and_audit(make_node, db_url):
    node = make_node()
    ds = _ct_dataset()
    cases = []
    missing_study = deepcopy(ds)
    del missing_study.StudyInstanceUID
    cases.append(("missing StudyInstanceUID", encode(missing_study), ds.SOPInstanceUID, StoreStatus.MISSING_UID))
    missing_sop = deepcopy(ds)
    del missing_sop.SOPInstanceUID
    cases.append(("missing SOPInstanceUID", encode(missing_sop), generate_uid(), StoreStatus.MISSING_UID))
    bad_series = deepcopy(ds)
    bad_series.SeriesInstanceUID = "1.2.abc.3"
    cases.append(("invalid SeriesInstanceUID", encode(bad_series), ds.SOPInstanceUID, StoreStatus.INVALID_UID))
    cases.append(("UID differs from command", encode(ds), generate_uid(), StoreStatus.SOP_INSTANCE_MISMATCH))
    unterminated = b"\x08\x00\x05\x00SQ\x00\x00\xff\xff\xff\xff" + b"\x01" * 50  # sequence that never ends
    cases.append(("undecodable", unterminated, generate_uid(), StoreStatus.CANNOT_PARSE))

    with associate(node.port) as assoc:
        for number, (label, payload, command_uid, expected) in enumerate(cases, start=1):
            status = send_raw(assoc, payload, command_uid, message_id=number)
            assert status == expected, f"{label}: got 0x{status:04X}"
        # the node keeps serving on the same association
        assert send_raw(assoc, encode(ds), ds.SOPInstanceUID, message_id=99) == StoreStatus.SUCCESS

    quarantined = sorted((node.data_dir / "quarantine").rglob("*.dcm"))
    assert len(quarantined) == len(cases)
    for path in quarantined:  # the bytes are kept, with a note of why
        note = json.loads(path.with_suffix(".json").read_text())
        assert note["status"] in {int(c[3]) for c in cases}
    kept_payloads = {dataset_bytes(p) for p in quarantined}
    assert {c[1] for c in cases} <= kept_payloads
    events = db_rows(db_url, AuditEvent, AuditEvent.kind == "instance.quarantined")
    assert sorted(e.status for e in events) == sorted(int(c[3]) for c in cases)
    assert len(db_rows(db_url, Instance)) == 1


def test_resend_identical_is_success_without_new_row_and_different_bytes_are_both_kept(make_node, db_url):
    node = make_node()
    ds = _ct_dataset()
    changed = deepcopy(ds)
    changed.SeriesDescription = "corrected by the PACS"
    with associate(node.port) as assoc:
        assert send_raw(assoc, encode(ds), ds.SOPInstanceUID, message_id=1) == StoreStatus.SUCCESS
        assert send_raw(assoc, encode(ds), ds.SOPInstanceUID, message_id=2) == StoreStatus.SUCCESS
        assert len(db_rows(db_url, Instance)) == 1
        assert send_raw(assoc, encode(changed), ds.SOPInstanceUID, message_id=3) == StoreStatus.SUCCESS
    rows = sorted(db_rows(db_url, Instance), key=lambda r: r.id)
    assert len(rows) == 2 and rows[0].sha256 != rows[1].sha256
    assert [r.is_current for r in rows] == [False, True]
    assert len(stored_files(node)) == 2
    (conflict,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "instance.conflict")
    assert conflict.sop_instance_uid == ds.SOPInstanceUID and conflict.detail["earlier_sha256"] == [rows[0].sha256]
    node.stop()
    (assoc_row,) = db_rows(db_url, Association)
    assert (assoc_row.instances_stored, assoc_row.instances_duplicate) == (2, 1)


def test_disk_below_watermark_answers_out_of_resources(make_node, db_url):
    node = make_node(min_free_bytes=10**18)
    ds = _ct_dataset()
    with associate(node.port) as assoc:
        assert send_raw(assoc, encode(ds), ds.SOPInstanceUID) == StoreStatus.OUT_OF_RESOURCES
    assert stored_files(node) == [] and db_rows(db_url, Instance) == []
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "store.refused")
    assert event.status == 0xA700 and "watermark" in event.detail["reason"]


def test_aborted_association_keeps_every_acknowledged_instance_and_indexes_nothing_else(make_node, db_url):
    node = make_node()
    sources = sorted(p for p in require_ct("head_ge_patient").iterdir() if p.is_file())[:6]
    datasets = [pydicom.dcmread(p) for p in sources]
    with associate(node.port) as assoc:
        for number, ds in enumerate(datasets[:5], start=1):
            assert send_raw(assoc, encode(ds), ds.SOPInstanceUID, message_id=number) == StoreStatus.SUCCESS
        send_partial_then_abort(assoc, encode(datasets[5]), datasets[5].SOPInstanceUID)
    node.stop()
    rows = db_rows(db_url, Instance)
    assert sorted(r.sop_instance_uid for r in rows) == sorted(ds.SOPInstanceUID for ds in datasets[:5])
    for row in rows:
        assert (node.data_dir / "store" / row.path).is_file()
    assert len(stored_files(node)) == 5
    (assoc_row,) = db_rows(db_url, Association)
    assert assoc_row.outcome == "aborted" and assoc_row.instances_stored == 5
    assert db_rows(db_url, AuditEvent, AuditEvent.kind == "association.aborted")


def test_logs_never_contain_patient_identifiers(make_node, db_url):
    study = require_ct("head_phantom_philips_study")
    files = dicom_files(study)
    node = make_node()
    ds = _ct_dataset()
    ds.PatientName, ds.PatientID, ds.AccessionNumber, ds.PatientBirthDate = "SECRET^PERSON", "PID-778899", "ACC-445566", "19440203"
    ds.SOPInstanceUID = generate_uid()
    with associate(node.port) as assoc:
        assert send_raw(assoc, encode(ds), ds.SOPInstanceUID) == StoreStatus.SUCCESS
        bad = deepcopy(ds)
        del bad.SeriesInstanceUID
        assert send_raw(assoc, encode(bad), ds.SOPInstanceUID, message_id=2) == StoreStatus.MISSING_UID
    assert storescu(node, *files[:20]).returncode == 0
    node.stop()
    log = node.log()
    assert "association ended" in log
    identifiers = {"SECRET^PERSON", "PID-778899", "ACC-445566", "19440203"}
    for path in files[:20]:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(header.get(k)) for k in ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate")
                        if len(str(header.get(k) or "")) >= 3}
    leaked = [value for value in identifiers if value in log]
    assert leaked == []


def _listening_sockets(port: int) -> set[str]:
    """Inodes of the IPv4 TCP sockets listening on ``port`` (from /proc/net/tcp)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {row[9] for row in rows if int(row[1].split(":")[1], 16) == port and row[3] == "0A"}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def test_receiver_processes_share_the_port_and_store_everything(make_node, db_url):
    """Sibling receivers accept on the socket the first one bound (whichever is least busy takes a connection)."""
    files = dicom_files(require_ct("head_ge_patient"))
    node = make_node(processes=2)
    pids = node.listening()
    assert len(pids) == 2  # both processes serve the port
    listening = _listening_sockets(node.port)
    assert len(listening) == 1 and all(listening <= _socket_inodes(pid) for pid in pids)  # one socket, held by both
    groups = [files[i::4] for i in range(4)]
    clients = [subprocess.Popen([require_tool("storescu"), "-aec", "CTNODE", "127.0.0.1", str(node.port),
                                 *map(str, group)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for group in groups for _ in range(2)]
    for client in clients:
        output = client.communicate(timeout=300)[0]
        assert client.returncode == 0, (output, [line for line in node.log().splitlines()
                                                 if '"level": "warning"' in line or '"level": "error"' in line])
    served_by = [json.loads(line)["pid"] for line in node.log().splitlines() if '"association requested"' in line]
    assert len(served_by) == 8 and set(served_by) == pids  # both processes took associations
    node.stop()
    rows = db_rows(db_url, Instance)
    assert sorted(r.sop_instance_uid for r in rows) == sorted(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files)
    associations = db_rows(db_url, Association)
    assert len(associations) == 8 and {a.outcome for a in associations} == {"released"}
    assert sum(a.instances_stored + a.instances_duplicate for a in associations) == 2 * len(files)
