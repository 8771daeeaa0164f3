"""Bad input gives a typed error with a precise message and no patient identifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.io import (
    GeometryError,
    NoDicomFilesError,
    NoEligibleSeriesError,
    SeriesInputError,
    group_series,
    load_volume,
    read_ct_volume,
    read_headers,
)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(NoDicomFilesError, match="no DICOM image instance .* \\(no files\\)"):
        read_ct_volume(tmp_path)


def test_folder_of_non_dicom_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(NoDicomFilesError, match="1 files, none a DICOM image"):
        read_ct_volume(tmp_path)


def test_single_slice(write_slice, assert_no_phi, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_slice("only", "1.2.3.1", 0.0)
    with pytest.raises(NoEligibleSeriesError, match=r"series 1\.2\.3\.1 \(S3\): 1 slice, need 8") as err:
        read_ct_volume(tmp_path)
    assert_no_phi(str(err.value))


def test_mixed_series_without_a_readable_candidate_lists_every_reason(write_slice, assert_no_phi, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_slice("scout", "1.2.3.1", 0.0, series_number=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    for i in range(2):
        write_slice(f"ax{i}", "1.2.3.2", float(i), series_number=2)
    for i in range(8):
        write_slice(f"sc{i}", "1.2.3.4", float(i), series_number=4, image_type=("DERIVED", "SECONDARY"))
    (tmp_path / "DICOMDIR.txt").write_text("x")
    with pytest.raises(NoEligibleSeriesError) as err:
        read_ct_volume(tmp_path)
    assert err.value.reasons == (
        "series 1.2.3.1 (S1): LOCALIZER image type",
        "series 1.2.3.2 (S2): 2 slices, need 8",
        "series 1.2.3.4 (S4): DERIVED\\SECONDARY image type, need ORIGINAL\\PRIMARY (or ORIGINAL\\SECONDARY)",
        "file DICOMDIR.txt: not a DICOM file",
    )
    assert_no_phi(str(err.value))


def test_missing_image_position_patient(write_slice, assert_no_phi, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = [write_slice(f"s{i}", "1.2.3.5", float(i), position=(i != 4)) for i in range(9)]
    headers = read_headers(tmp_path).headers
    uid = next(h.sop_instance_uid for h in headers if h.path == paths[4])
    with pytest.raises(NoEligibleSeriesError, match=rf"instance {uid} has no ImagePositionPatient"):
        read_ct_volume(tmp_path)
    with pytest.raises(GeometryError, match=rf"series 1\.2\.3\.5 \(S3\): instance {uid} has no ImagePositionPatient") as err:
        load_volume(group_series(headers)[0])
    assert_no_phi(str(err.value))


def test_missing_image_orientation_patient(write_slice, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(8):
        write_slice(f"s{i}", "1.2.3.6", float(i), orientation=None)
    with pytest.raises(NoEligibleSeriesError, match=r"has no ImageOrientationPatient \(and 7 more\)"):
        read_ct_volume(tmp_path)


def test_non_ct_modality(write_slice, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(8):
        write_slice(f"mr{i}", "1.2.3.7", float(i), modality="MR", series_number=7)
    with pytest.raises(NoEligibleSeriesError, match=r"^no series .*: series 1\.2\.3\.7 \(S7\): modality MR, need CT$"):
        read_ct_volume(tmp_path)


def test_every_io_error_is_a_series_input_error() -> None:
    for kind in (NoDicomFilesError, NoEligibleSeriesError, GeometryError):
        assert issubclass(kind, SeriesInputError) and issubclass(kind, ValueError)
