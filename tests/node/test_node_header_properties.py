"""Property tests of the header scanner against pydicom: any data set pydicom writes, the scanner reads the same
way (or declines); any corruption of the bytes, it declines or reads without raising."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.dicom.header import scan

CHARSETS = {"ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8", "ISO_IR 144": "iso8859_5", "ISO_IR 126": "iso8859_7"}
_PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _text(charset: str, max_size: int) -> st.SearchStrategy[str]:
    """Text the character set can encode, without the characters DICOM text values must not hold."""
    codec = CHARSETS[charset]

    def encodable(s: str) -> bool:
        try:
            s.encode(codec)
        except UnicodeEncodeError:
            return False
        return True

    alphabet = st.characters(min_codepoint=0x20, max_codepoint=0x4FF, exclude_characters="\\^=")
    return st.text(alphabet, min_size=1, max_size=max_size).map(str.strip).filter(lambda s: s and encodable(s))


uids = st.lists(st.integers(0, 10**12), min_size=2, max_size=8).map(lambda parts: ".".join(map(str, parts))).filter(
    lambda u: len(u) <= 64)


@st.composite
def datasets(draw: st.DrawFn) -> tuple[Dataset, str]:
    charset = draw(st.sampled_from(sorted(CHARSETS)))
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = draw(uids), draw(uids), draw(uids)
    ds.PatientName = draw(_text(charset, 30))
    ds.PatientID = draw(_text(charset, 20))
    ds.StudyDescription = draw(_text(charset, 60))
    ds.SeriesNumber = draw(st.integers(-(2**31), 2**31 - 1))
    ds.InstanceNumber = draw(st.integers(0, 10**11))
    if draw(st.booleans()):  # a sequence (defined or undefined length) among the wanted attributes
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "1", "99X", draw(_text(charset, 40))
        ds.ProcedureCodeSequence = Sequence([item])
        undefined = draw(st.booleans())
        ds["ProcedureCodeSequence"].is_undefined_length = undefined
        ds.ProcedureCodeSequence[0].is_undefined_length_sequence_item = undefined
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds, str(ds.file_meta.TransferSyntaxUID)


def _write(ds: Dataset) -> Path:
    path = Path(tempfile.mkdtemp()) / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@_PROFILE
@given(datasets())
def test_scanner_reads_what_pydicom_reads(case: tuple[Dataset, str]):
    ds, syntax = case
    path = _write(ds)
    got = scan(path, syntax)
    assert got is not None
    back = pydicom.dcmread(path)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "StudyDescription"):
        assert got[keyword] == str(back.get(keyword)).strip(), keyword
    assert got["PatientName"] == str(back.PatientName)
    assert int(got["SeriesNumber"]) == int(back.SeriesNumber) and int(got["InstanceNumber"]) == int(back.InstanceNumber)


@_PROFILE
@given(datasets(), st.data())
def test_scanner_never_raises_on_corrupted_bytes(case: tuple[Dataset, str], data: st.DataObject):
    ds, syntax = case
    raw = bytearray(_write(ds).read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(128, max(128, len(raw) - 1)))
        if op == "flip" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    path = Path(tempfile.mkdtemp()) / "bad.dcm"
    path.write_bytes(bytes(raw))
    got = scan(path, syntax)
    assert got is None or all(isinstance(v, str) for v in got.values())
