"""The report stage: one prepared input for every builder, identical bytes on a rebuild, what it records."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from detector.findings import Finding
from node.reports import (
    AlgorithmIdentity,
    OutputKind,
    ReportOptions,
    report_stage,
)
from tests.node.reports.conftest import run_on

_CLOCKED = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "SeriesDate", "SeriesTime",
            "DateOfSecondaryCapture", "TimeOfSecondaryCapture", "PresentationCreationDate", "PresentationCreationTime")


def test_rebuilding_a_run_gives_byte_identical_files(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity, tmp_path: Path
) -> None:
    options = ReportOptions(enable_gsps=True, enable_kos=True)
    created = datetime(2026, 3, 4, 5, 6, 7)
    run = run_on("run-7", chest_series, [chest_tumour], algorithm, created=created)
    _, first = report_stage(run, options, tmp_path / "first")
    _, second = report_stage(run, options, tmp_path / "second")
    assert [w.path.name for w in first] == ["sr.dcm", "sc-001.dcm", "sc-002.dcm", "gsps.dcm", "kos.dcm"]
    for a, b in zip(first, second, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes(), f"{a.path.name} differs between two builds"
    for written in first:
        ds = pydicom.dcmread(written.path)
        stamped = {k: str(ds.get(k)) for k in _CLOCKED if k in ds}
        assert stamped["InstanceCreationDate"] == "20260304" and stamped["InstanceCreationTime"] == "050607"
        assert {v for k, v in stamped.items() if k.endswith("Date")} == {"20260304"}, written.path.name
        assert {v for k, v in stamped.items() if k.endswith("Time")} == {"050607"}, written.path.name


def test_a_run_without_its_own_time_takes_its_images_newest(
    chest_series: list[Dataset], algorithm: AlgorithmIdentity, tmp_path: Path
) -> None:
    _, [sr, _] = report_stage(run_on("run-8", chest_series, [], algorithm), ReportOptions(), tmp_path)
    newest = max(str(ds.get("ContentDate") or ds.get("AcquisitionDate") or ds.get("SeriesDate") or ds.StudyDate)
                 for ds in chest_series)
    assert pydicom.dcmread(sr.path).ContentDate == newest


def test_written_objects_say_what_the_audit_and_outbox_need(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity, tmp_path: Path
) -> None:
    objects, written = report_stage(run_on("run-9", chest_series, [chest_tumour], algorithm), ReportOptions(),
                                    tmp_path)
    assert [w.kind for w in written] == [OutputKind.SR, OutputKind.SC, OutputKind.SC]
    for (_, _, dataset), output in zip(objects.named(), written, strict=True):
        assert output.sha256 == hashlib.sha256(output.path.read_bytes()).hexdigest()
        assert (output.sop_instance_uid, output.series_instance_uid, output.study_instance_uid) == (
            dataset.SOPInstanceUID, dataset.SeriesInstanceUID, dataset.StudyInstanceUID)
        assert output.transfer_syntax_uid == pydicom.dcmread(output.path).file_meta.TransferSyntaxUID
