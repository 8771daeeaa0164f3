"""The receiver's fast header scan agrees with pydicom on every real file, and declines what it cannot read."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
from pydicom.valuerep import PersonName

from node.dicom.header import WANTED, scan
from tests.support import dicom_files, require_ct


def _expected(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    return str(value).strip()


def test_scan_matches_pydicom_on_all_real_ct_files():
    files = dicom_files(require_ct())
    scanned = 0
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        got = scan(path, str(ds.file_meta.TransferSyntaxUID))
        if got is None:
            continue
        scanned += 1
        for keyword in WANTED.values():
            if keyword == "SpecificCharacterSet":
                continue
            value = got.get(keyword) or None
            if value is not None and keyword in ("SeriesNumber", "InstanceNumber"):
                value = str(int(value))
            if value is not None and keyword == "PatientName":
                value = str(PersonName(value))
            assert value == _expected(ds, keyword), f"{path}: {keyword}"
    assert scanned >= 0.95 * len(files)


def test_scan_skips_undefined_length_sequences(tmp_path: Path):
    ds = pydicom.dcmread(dicom_files(require_ct("head_ge_patient"))[0])
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "1", "99X", "nested"
    ds.ProcedureCodeSequence = [item]  # (0008,1032): before the UIDs of group 0020
    path = tmp_path / "seq.dcm"
    ds["ProcedureCodeSequence"].is_undefined_length = True  # written with item and sequence delimiters
    ds.ProcedureCodeSequence[0].is_undefined_length_sequence_item = True
    ds.save_as(path, enforce_file_format=True)
    assert struct.pack("<HHI", 0xFFFE, 0xE0DD, 0) in path.read_bytes()
    got = scan(path, str(ds.file_meta.TransferSyntaxUID))
    assert got is not None and got["SeriesInstanceUID"] == ds.SeriesInstanceUID


def test_scan_declines_deflate_and_truncated_headers(tmp_path: Path):
    source = dicom_files(require_ct("head_ge_patient"))[0]
    assert scan(source, "1.2.840.10008.1.2.1.99") is None  # deflated: pydicom's job
    truncated = tmp_path / "t.dcm"
    truncated.write_bytes(source.read_bytes()[:400])
    assert scan(truncated, "1.2.840.10008.1.2.1") is None
