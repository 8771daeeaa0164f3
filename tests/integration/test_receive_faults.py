"""Faults staged around an in-process receiver: the audit database unreachable, the disk full mid-transfer,
a group commit that fails."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom.association import Association as DicomAssociation
from sqlalchemy import Connection, event, select

from node.config import AllowedPeer, DicomConfig, StorageConfig
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.db.schema import Association, AuditEvent, Instance
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


def _break_database(conn: Connection, disk: Path | None) -> None:
    """A real fault just before COMMIT: the database's filesystem full (SQLite), its backend killed (PostgreSQL)."""
    if disk is not None:
        # The suppress encloses the close too: closing flushes what the last write buffered, and fails with ENOSPC.
        with contextlib.suppress(OSError), (disk / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        return
    import psycopg

    pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
    admin = os.environ["CTNODE_TEST_PG_URL"]
    with psycopg.connect(admin, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_a_failed_group_commit_answers_out_of_resources_to_every_c_store_in_its_batch(
        tmp_path: Path, db_url: str, request: pytest.FixtureRequest):
    disk: Path | None = None
    if db_url.startswith("sqlite"):  # the database on a small filesystem of its own, filled at the commit
        disk = request.getfixturevalue("small_disk")
        db_url = f"sqlite:///{disk / 'ctnode.sqlite'}"
    upgrade(db_url)
    engine = make_engine(db_url)
    store = InstanceStore(StorageConfig(data_dir=tmp_path / "data", min_free_bytes=0))
    port = free_port()
    scp = StorageSCP(DicomConfig(host="127.0.0.1", port=port, allowed=[AllowedPeer(ae_title="STORESCU")]),
                     store, engine)
    datasets = [pydicom.dcmread(p) for p in dicom_files(require_ct("head_ge_patient"))[:7]]
    batch = 4
    commits: list[int] = []

    @event.listens_for(engine, "commit")
    def _on_commit(conn: Connection) -> None:
        if threading.current_thread().name != "receive-commit":
            return
        commits.append(len(commits))
        if len(commits) == 1:  # hold the first group commit until the next batch has formed behind it
            deadline = time.monotonic() + 60
            while len(scp.receiver._commits._pending) < batch:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        elif len(commits) == 2:
            _break_database(conn, disk)

    statuses: dict[str, int] = {}

    def send(assoc: DicomAssociation, ds: pydicom.Dataset) -> None:
        statuses[ds.SOPInstanceUID] = send_raw(assoc, encode(ds), ds.SOPInstanceUID)

    server = scp.start()
    try:
        with associate(port) as assoc:
            send(assoc, datasets[0])  # row first: no commit has succeeded yet
        if disk is not None:  # an empty WAL, so the failing commit must grow it
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        with contextlib.ExitStack() as stack:  # associated first: their rows are written before the hold
            first, *others = [stack.enter_context(associate(port)) for _ in range(1 + batch)]
            held = threading.Thread(target=send, args=(first, datasets[1]))
            held.start()
            while not commits:
                time.sleep(0.01)
            senders = [threading.Thread(target=send, args=(assoc, ds)) for assoc, ds in zip(others, datasets[2:])]
            for thread in senders:
                thread.start()
            for thread in [held, *senders]:
                thread.join(timeout=120)
            if disk is not None:
                (disk / "filler").unlink()
        with associate(port) as assoc:
            send(assoc, datasets[6])  # row first again after the failure, and stored
    finally:
        server.shutdown()
    failed = {str(ds.SOPInstanceUID) for ds in datasets[2:2 + batch]}
    assert len(commits) == 2
    assert {sop: status for sop, status in statuses.items() if sop in failed} == dict.fromkeys(
        failed, StoreStatus.OUT_OF_RESOURCES)
    assert {sop for sop, status in statuses.items() if status == StoreStatus.SUCCESS} == {
        str(ds.SOPInstanceUID) for ds in (datasets[0], datasets[1], datasets[6])}
    with engine.connect() as conn:
        rows = conn.execute(select(Instance.sop_instance_uid, Instance.path, Instance.sha256)).all()
    assert {row.sop_instance_uid for row in rows} == {sop for sop, status in statuses.items() if status == 0}
    for row in rows:  # every committed row names its complete file
        assert hashlib.sha256((store.root / row.path).read_bytes()).hexdigest() == row.sha256
    # The failed batch's files left the store at once (no restart, no reconciliation), kept aside and audited.
    assert {p.relative_to(store.root).as_posix() for p in store.root.rglob("*.dcm")} == {row.path for row in rows}
    kept = {p.name.split("-", 2)[2].rsplit(".", 2)[0]: p for p in store.quarantine_root.rglob("*.dcm")}
    assert set(kept) == failed
    with engine.connect() as conn:
        audited = conn.execute(select(AuditEvent).where(AuditEvent.kind == "instance.quarantined")).all()
    assert {e.sop_instance_uid for e in audited} == failed
    assert all(e.status == StoreStatus.OUT_OF_RESOURCES and e.path == str(kept[e.sop_instance_uid])
               and "database error" in e.detail["reason"] for e in audited)
    assert scp.reconcile(older_than_s=0).orphans == {}
    engine.dispose()
