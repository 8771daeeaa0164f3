"""The receive stage's one keep-aside path, its one "audit, or log that the audit failed", its association rows."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import OperationalError

from node.config import DicomConfig, StorageConfig
from node.db import audit
from node.db.associations import close_association, open_association
from node.db.engine import make_engine
from node.db.schema import Association, AuditEvent
from node.dicom.receive import OutcomeKind, Received, Receiver
from node.dicom.scp import StorageSCP
from node.events import AssociationOutcome, AuditKind
from node.storage.store import InstanceStore
from tests.support import dicom_files, free_port, require_ct


def _store(tmp_path: Path, quota: int = 10 * 1024**2) -> InstanceStore:
    return InstanceStore(StorageConfig(data_dir=tmp_path, min_free_bytes=0, quarantine_max_bytes=quota))


def _events(engine: Engine, kind: AuditKind) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditEvent).where(AuditEvent.kind == str(kind)).order_by(AuditEvent.id)))


def _spool(store: InstanceStore, name: str, size: int) -> Path:
    path = store.incoming / f"{name}.part"
    path.write_bytes(b"\x01" * size)
    return path


def test_refused_incomplete_and_stale_bytes_are_kept_aside_one_way(tmp_path: Path, engine: Engine) -> None:
    """Within the quota the bytes go into the quarantine with their note; beyond it they are discarded; either
    way one audit row says what happened; a file already gone is neither kept nor audited."""
    store = _store(tmp_path, quota=3000)
    receiver = Receiver(store, engine)
    kept = receiver.keep_aside(_spool(store, "a", 1000), "incomplete", AuditKind.SPOOL_RECOVERED,
                               {"reason": "incomplete transfer", "size": 1000})
    assert kept is not None and kept.read_bytes() == b"\x01" * 1000 and kept.parent.parent == store.quarantine_root
    assert json.loads(kept.with_suffix(".json").read_text())["size"] == 1000
    over = _spool(store, "b", 5000)
    assert receiver.keep_aside(over, "incomplete", AuditKind.SPOOL_RECOVERED, {"size": 5000}) is None
    assert not over.exists()
    with pytest.raises(FileNotFoundError):
        receiver.keep_aside(store.incoming / "gone.part", "incomplete", AuditKind.SPOOL_RECOVERED, {})
    first, second = _events(engine, AuditKind.SPOOL_RECOVERED)
    assert first.path == str(kept) and "not_kept" not in first.detail
    assert second.path is None and "quota" in second.detail["not_kept"]

    # the receiver's other two ways in: a dead receiver's stale spool, and an undecodable data set
    scp = StorageSCP(DicomConfig(host="127.0.0.1", port=free_port()), store, engine)
    scp.receiver = receiver
    stale = _spool(store, "stale", 500)
    assert scp.recover_stale_spools(older_than_s=0) == 1 and not stale.exists()
    assert len(_events(engine, AuditKind.SPOOL_RECOVERED)) == 3
    broken = _spool(store, "broken", 200)
    outcome = receiver.receive(Received(broken, hashlib.sha256(broken.read_bytes()).hexdigest(), 200,
                                        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", None))
    assert outcome.kind is OutcomeKind.QUARANTINED and Path(outcome.detail["path"]).is_file()
    (quarantined,) = _events(engine, AuditKind.INSTANCE_QUARANTINED)
    assert quarantined.path == outcome.detail["path"] and quarantined.sop_instance_uid == "1.2.3.4"


def test_an_audit_row_the_database_refuses_is_logged_held_and_written_with_the_next_commit(
        tmp_path: Path, engine: Engine) -> None:
    store = _store(tmp_path)
    receiver = Receiver(store, engine)
    failing = True

    def refuse_audit(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if failing and statement.lstrip().upper().startswith("INSERT INTO AUDIT_EVENT"):
            raise OperationalError(statement, parameters, Exception("database is locked"))

    event.listen(engine, "before_cursor_execute", refuse_audit)
    try:
        assert audit.record_or_log(engine, AuditKind.CONNECTION_REFUSED, detail={"reason": "test"}) is False
        kept = receiver.keep_aside(_spool(store, "a", 100), "incomplete", AuditKind.SPOOL_RECOVERED, {"size": 100})
        assert kept is not None and _events(engine, AuditKind.SPOOL_RECOVERED) == []
        failing = False
        source = dicom_files(require_ct("head_ge_patient"))[0]
        spool = store.incoming / "ct.part"
        shutil.copyfile(source, spool)
        ds = pydicom.dcmread(spool, stop_before_pixels=True)
        data = spool.read_bytes()
        outcome = receiver.receive(Received(spool, hashlib.sha256(data).hexdigest(), len(data), str(ds.SOPClassUID),
                                            str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID), None))
        assert outcome.kind is OutcomeKind.STORED
    finally:
        event.remove(engine, "before_cursor_execute", refuse_audit)
    (held,) = _events(engine, AuditKind.SPOOL_RECOVERED)  # written once a commit of ours succeeded
    assert held.path == str(kept) and "happened_at" in held.detail
    assert _events(engine, AuditKind.CONNECTION_REFUSED) == []  # a row outside the receive stage: logged only


def test_without_a_database_the_audit_helper_logs_and_returns(tmp_path: Path) -> None:
    down = make_engine(f"postgresql://ctnode@127.0.0.1:{free_port()}/ctnode")
    assert audit.record_or_log(down, AuditKind.STORE_REFUSED, detail={"reason": "test"}) is False
    assert audit.write_or_log(down, "association", lambda conn: 1) is None


def test_association_rows_open_and_close(engine: Engine) -> None:
    with engine.begin() as conn:
        accepted = open_association(conn, "A" * 20, "CTNODE", "127.0.0.1", 4242)
        rejected = open_association(conn, "OTHER", "CTNODE", "10.0.0.1", 1, rejected="calling AE not allowed")
        close_association(conn, accepted, AssociationOutcome.RELEASED, 3, 1, 0, 12345)
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(Association))}
    assert rows[accepted].calling_ae == "A" * 16 and rows[accepted].outcome == "released"
    assert (rows[accepted].instances_stored, rows[accepted].instances_duplicate, rows[accepted].bytes_stored) == (
        3, 1, 12345) and rows[accepted].ended_at is not None
    assert rows[rejected].outcome == "rejected" and rows[rejected].reject_reason == "calling AE not allowed"
    assert rows[rejected].ended_at is not None
