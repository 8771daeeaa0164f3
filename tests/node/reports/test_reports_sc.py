"""Secondary Capture overlays: the box drawn where the finding is, banner burned in, references and study set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from detector.findings import Finding
from detector.io import load_volume, read_headers, select_series
from node.reports import AlgorithmIdentity, PreparedReport, ReportOptions, build_secondary_captures
from node.reports.render import BANNER_RGB, BOX_RGB
from node.reports.captions import key_slice
from node.reports.from_detection import volume_run
from node.reports.sc import SC_SERIES_DESCRIPTION
from tests.node.reports.conftest import CHEST, ct_data, run_on


def test_overlay_shows_the_box_at_the_finding_and_the_banner(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity, tmp_path: Path
) -> None:
    overlay, summary = build_secondary_captures(PreparedReport.of(run_on("run-1", chest_series, [chest_tumour], algorithm), ReportOptions()))
    pixels = overlay.pixel_array
    Image.fromarray(pixels).save(tmp_path / "overlay.png")
    Image.fromarray(summary.pixel_array).save(tmp_path / "summary.png")
    x1, y1, x2, y2 = (int(v) for v in key_slice(chest_tumour).box_px)
    middle_row, middle_column = (y1 + y2) // 2, (x1 + x2) // 2
    border = [pixels[middle_row, x1 - 1], pixels[middle_row, x2], pixels[y2, middle_column]]
    assert all(tuple(p) == BOX_RGB for p in border), border
    inside, far = pixels[middle_row, middle_column], pixels[middle_row, 60]
    assert inside[0] == inside[1] == inside[2] and far[0] == far[1] == far[2], "CT pixels stay grey"
    assert tuple(pixels[3, 3]) == BANNER_RGB
    yellow = np.all(pixels == BOX_RGB, axis=-1)
    rows, columns = np.nonzero(yellow)
    assert rows.min() >= y1 - 40 and columns.min() >= x1 - 40, "box drawing stays near the finding"


def test_overlay_header_references_its_source_slice(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity
) -> None:
    overlay, summary = build_secondary_captures(PreparedReport.of(run_on("run-1", chest_series, [chest_tumour], algorithm), ReportOptions()))
    key = key_slice(chest_tumour).sop_instance_uid
    source = chest_series[0]
    for sc in (overlay, summary):
        assert sc.BurnedInAnnotation == "YES"
        assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
        assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
        assert sc.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert sc.SeriesDescription == SC_SERIES_DESCRIPTION
        assert key in {i.ReferencedSOPInstanceUID for i in sc.SourceImageSequence}
    assert overlay.SeriesInstanceUID == summary.SeriesInstanceUID
    assert [overlay.InstanceNumber, summary.InstanceNumber] == [1, 2]
    assert list(overlay.PatientOrientation) == ["L", "P"]


def test_no_finding_run_gets_only_the_summary(chest_series: list[Dataset], algorithm: AlgorithmIdentity) -> None:
    run = run_on("run-1", chest_series, [], algorithm)
    captures = build_secondary_captures(PreparedReport.of(run, ReportOptions(banner_text="TEST ONLY")))
    assert len(captures) == 1
    red = np.all(captures[0].pixel_array == BANNER_RGB, axis=-1)
    assert red[:4].all() and red[:20].mean() > 0.8, "the banner spans the top of the summary"


def test_the_overlays_draw_the_detectors_volume_and_read_no_file(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report stage takes the headers and HU the detector read: no source file is opened again, and the
    overlays are the ones drawn from each image's own pixels."""
    volume = load_volume(select_series(read_headers(ct_data(CHEST, "series_5mm_lung_kernel"))).chosen)
    assert len(volume.headers) == len(chest_series) and not any("PixelData" in ds for ds in volume.headers)
    run = volume_run(volume, "run-1", [chest_tumour], algorithm)
    assert set(run.key_slices_hu) == {key_slice(chest_tumour).sop_instance_uid}

    def no_reading(*_: object, **__: object) -> None:
        raise AssertionError("the report stage read a file")

    with monkeypatch.context() as patched:
        patched.setattr(pydicom, "dcmread", no_reading)
        patched.setattr(pydicom.filereader, "dcmread", no_reading)
        from_volume = build_secondary_captures(PreparedReport.of(run, ReportOptions()))
    from_files = build_secondary_captures(PreparedReport.of(run_on("run-1", chest_series, [chest_tumour], algorithm),
                                                            ReportOptions()))
    assert [sc.pixel_array.tobytes() for sc in from_volume] == [sc.pixel_array.tobytes() for sc in from_files]
