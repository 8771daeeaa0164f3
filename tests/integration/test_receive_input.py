"""Hostile or inconsistent data sets: strict UIDs, a series claimed by two studies, numbers that overflow,
the quarantine's quota and watermark, and the store reconciled with the index."""

from __future__ import annotations

import json
import os
from copy import deepcopy

import pytest
from pydicom.uid import generate_uid

from node.db.schema import AuditEvent, Instance
from node.dicom.status import StoreStatus
from tests.integration.dicom_client import associate, encode, send_raw, send_store_without_data_set
from tests.integration.test_receive import _ct_dataset, db_rows, stored_files

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("bad", [" 1.2.826.0.1.3680043.2.1", "1.2.826.0.1.3680043.2.1 ", "1.2.826.0.1\n.3680043",
                                 "1.2.826.0.1.36\x0180043", "1.2..3", "1." + "2" * 63, "1.2.3."])
def test_uids_must_be_digits_and_dots_within_64_characters(make_node, db_url, bad):
    node = make_node()
    ds = _ct_dataset()
    placeholder = "9" * len(bad)  # pydicom cleans UIDs it writes: put the bad bytes in after encoding
    ds.StudyInstanceUID = placeholder
    payload = encode(ds).replace(placeholder.encode(), bad.encode("latin-1"), 1)
    with associate(node.port) as assoc:
        assert send_raw(assoc, payload, ds.SOPInstanceUID) == StoreStatus.INVALID_UID
    assert stored_files(node) == [] and db_rows(db_url, Instance) == []
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "instance.quarantined")
    assert event.status == StoreStatus.INVALID_UID and "StudyInstanceUID" in event.detail["reason"]
    assert os.path.isfile(event.path)  # the bytes stay on disk


def test_a_series_first_seen_in_another_study_is_refused_precisely(make_node, db_url):
    node = make_node()
    first = _ct_dataset()
    second = deepcopy(first)
    second.StudyInstanceUID, second.SOPInstanceUID = generate_uid(), generate_uid()  # same series, other study
    with associate(node.port) as assoc:
        assert send_raw(assoc, encode(first), first.SOPInstanceUID, message_id=1) == StoreStatus.SUCCESS
        status = send_raw(assoc, encode(second), second.SOPInstanceUID, message_id=2)
        assert status == StoreStatus.SERIES_IN_OTHER_STUDY
    (row,) = db_rows(db_url, Instance)
    assert row.sop_instance_uid == first.SOPInstanceUID
    assert all(str(second.StudyInstanceUID) not in str(p) for p in stored_files(node))
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "instance.quarantined")
    assert event.status == 0xC004 and event.sop_instance_uid == second.SOPInstanceUID
    assert os.path.isfile(event.path)


def test_numbers_beyond_32_bits_are_stored_without_them(make_node, db_url):
    node = make_node()
    ds = _ct_dataset()
    ds.InstanceNumber, ds.SeriesNumber = "999999999999", "-99999999999"  # valid IS, beyond an INTEGER column
    with associate(node.port) as assoc:
        assert send_raw(assoc, encode(ds), ds.SOPInstanceUID) == StoreStatus.SUCCESS
    (row,) = db_rows(db_url, Instance)
    assert row.instance_number is None


def test_quarantine_quota_keeps_no_more_bytes_but_still_answers_and_audits(make_node, db_url):
    node = make_node(storage={"quarantine_max_bytes": 1000})
    ds = _ct_dataset()
    del ds.SeriesInstanceUID
    with associate(node.port) as assoc:
        assert send_raw(assoc, encode(ds), ds.SOPInstanceUID) == StoreStatus.MISSING_UID
    assert list((node.data_dir / "quarantine").rglob("*.dcm")) == []
    assert list((node.data_dir / "incoming").iterdir()) == []
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "instance.quarantined")
    assert event.path is None and "quota of 1000 bytes" in event.detail["not_kept"]


def test_nothing_is_spooled_or_quarantined_while_the_watermark_refuses_data(make_node, db_url):
    node = make_node(min_free_bytes=10**18)
    ds = _ct_dataset()
    bad = deepcopy(ds)
    del bad.SeriesInstanceUID
    with associate(node.port) as assoc:
        assert send_raw(assoc, encode(bad), ds.SOPInstanceUID, message_id=1) == StoreStatus.OUT_OF_RESOURCES
        assert send_raw(assoc, encode(ds), ds.SOPInstanceUID, message_id=2) == StoreStatus.OUT_OF_RESOURCES
    assert list((node.data_dir / "quarantine").rglob("*.dcm")) == []
    assert list((node.data_dir / "incoming").iterdir()) == []
    events = db_rows(db_url, AuditEvent, AuditEvent.kind == "store.refused")
    assert len(events) == 2 and all("watermark" in e.detail["reason"] for e in events)


def test_store_files_no_row_names_are_moved_aside_at_start_and_by_store_check(make_node, db_url):
    node = make_node()
    ds = _ct_dataset()
    with associate(node.port) as assoc:
        assert send_raw(assoc, encode(ds), ds.SOPInstanceUID) == StoreStatus.SUCCESS
    node.stop()
    (indexed,) = stored_files(node)
    # What a crash between the rename into the store and the row commit leaves: a file no row names.
    orphan = indexed.parent / f"{generate_uid()}.0123456789ab.dcm"
    orphan.write_bytes(indexed.read_bytes())
    os.utime(orphan, (1, 1))  # older than the grace period that protects files being committed
    node.start()
    assert stored_files(node) == [indexed]
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "store.orphan")
    assert os.path.isfile(event.path) and "orphans" in event.path
    assert event.detail["store_path"] == orphan.relative_to(node.data_dir / "store").as_posix()

    second = indexed.parent / f"{generate_uid()}.ba9876543210.dcm"
    second.write_bytes(b"left by a crash")
    os.utime(second, (1, 1))
    checked = node.cli("store", "check", "--json")
    assert checked.returncode == 1, checked.stderr
    found = json.loads(checked.stdout)
    assert list(found["orphans"]) == [second.relative_to(node.data_dir / "store").as_posix()]
    assert found["missing"] == [] and not second.exists()
    assert node.cli("store", "check").returncode == 0  # nothing left to find
    assert len(db_rows(db_url, AuditEvent, AuditEvent.kind == "store.orphan")) == 2


def test_a_c_store_without_a_data_set_is_answered_cannot_understand(make_node, db_url):
    node = make_node()
    with associate(node.port) as assoc:
        assert send_store_without_data_set(assoc, generate_uid()) == StoreStatus.CANNOT_PARSE
        assert assoc.send_c_echo().Status == 0x0000
    (event,) = db_rows(db_url, AuditEvent, AuditEvent.kind == "instance.quarantined")
    assert event.status == StoreStatus.CANNOT_PARSE and "without a data set" in event.detail["reason"]
