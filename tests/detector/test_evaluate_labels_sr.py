"""The TID 1500 SR label reader: ctnode's own SR reads back to its findings; other tools' regions; bad files."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as DicomCode

from detector.findings import Code, Finding, SliceBox
from detector.io import read_headers
from detector.labels.lesions import (
    MIN_TARGET_DIAMETER_MM,
    ImagePlane,
    LabelError,
    planes_from_headers,
)
from detector.labels.tid1500 import is_measurement_report, read_sr
from node.reports import (
    AlgorithmIdentity,
    PreparedReport,
    ReportOptions,
    ReportRun,
    build_sr,
)
from tests.support import imaging_measurements

CHEST = "chest_lung_pet_ct_dx_A0001"
NEOPLASM = Code("108369006", "SCT", "Neoplasm")
MILLILITRE = DicomCode("ml", "UCUM", "milliliter")
ALGORITHM = AlgorithmIdentity(name="ctnode-test", version="1.0", weights_sha256="ab" * 32)


@pytest.fixture(scope="module")
def chest(ct_data: Callable[[str], Path]) -> tuple[list[Dataset], dict[str, ImagePlane]]:
    """The chest series' headers sorted along z, and their planes."""
    folder = ct_data(CHEST) / "series_5mm_lung_kernel"
    series = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")),
                    key=lambda ds: float(ds.ImagePositionPatient[2]))
    return series, planes_from_headers(read_headers(folder).headers)


def _finding(planes: dict[str, ImagePlane], boxes: dict[str, tuple[float, float, float, float]],
             tracking_id: str = "") -> Finding:
    """A finding with one box per image; its centre is the mean of the boxes' corners in patient space."""
    corners = np.concatenate([planes[uid].to_patient([b[:2], b[2:]]) for uid, b in boxes.items()])
    centre, size = corners.mean(axis=0), np.ptp(corners, axis=0)
    x0, y0 = (min(b[i] for b in boxes.values()) for i in (0, 1))
    x1, y1 = (max(b[i] for b in boxes.values()) for i in (2, 3))
    return Finding(
        label="tumour", finding_type=NEOPLASM, score=0.8,
        centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
        size_mm=(float(size[0]), float(size[1]), float(size[2])),
        voxel_box=(0, int(y0), int(x0), len(boxes), int(y1), int(x1)),
        slices=tuple(SliceBox(uid, box, 0.8) for uid, box in boxes.items()), tracking_id=tracking_id,
    )


@pytest.fixture(scope="module")
def findings(chest: tuple[list[Dataset], dict[str, ImagePlane]], ct_data: Callable[[str], Path]) -> list[Finding]:
    """The radiologists' tumour boxes on 11 slices, and a single-slice finding elsewhere."""
    series, planes = chest
    tumour = {}
    for xml in (ct_data(CHEST) / "annotations").glob("*.xml"):
        box = ET.parse(xml).getroot().find("object/bndbox")
        assert box is not None
        tumour[xml.stem] = tuple(float(box.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax"))
    other = {str(series[40].SOPInstanceUID): (100.0, 120.5, 130.0, 150.0)}
    return [_finding(planes, dict(sorted(tumour.items())), "lesion A"), _finding(planes, other)]


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _ctnode_sr(series: list[Dataset], findings: list[Finding]) -> hd.sr.Comprehensive3DSR:
    return build_sr(PreparedReport.of(ReportRun("run-1", series, findings, ALGORITHM), ReportOptions()))


@pytest.fixture(scope="module")
def ctnode_sr(chest: tuple[list[Dataset], dict[str, ImagePlane]], findings: list[Finding]) -> Dataset:
    """ctnode's SR of the two findings (copy it before changing it)."""
    return _ctnode_sr(chest[0], findings)


def test_ctnode_sr_reads_back_to_its_findings(chest: tuple[list[Dataset], dict[str, ImagePlane]], ctnode_sr: Dataset,
                                              findings: list[Finding], tmp_path: Path) -> None:
    planes = chest[1]
    assert is_measurement_report(ctnode_sr)
    records = read_sr(_write(ctnode_sr, tmp_path / "sr.dcm"), planes)
    assert len(records) == len(findings)
    for finding, record in zip(findings, records, strict=True):
        assert np.linalg.norm(np.subtract(record.centre_mm, finding.centre_mm)) < 1.0
        assert record.label == "Neoplasm" and not record.ignore
        assert len(record.outlines) == len(finding.slices)
        boxes = {o.plane.sop_instance_uid: (*o.polygon_px.min(axis=0), *o.polygon_px.max(axis=0))
                 for o in record.outlines}
        assert boxes == {s.sop_instance_uid: pytest.approx(s.box_px) for s in finding.slices}
        assert record.hit_by(finding.centre_mm)
    assert records[0].source.endswith("lesion A") and records[1].source.endswith("finding 2")


def test_lone_region_without_centre_group_gives_the_box_centre(
    chest: tuple[list[Dataset], dict[str, ImagePlane]], findings: list[Finding], tmp_path: Path
) -> None:
    series, planes = chest
    [record] = read_sr(_write(_ctnode_sr(series, findings[1:]), tmp_path / "sr.dcm"), planes)
    assert record.centre_mm == pytest.approx(findings[1].centre_mm, abs=1e-6)
    spacing = planes[findings[1].slices[0].sop_instance_uid].pixel_spacing_mm[1]
    assert record.diameter_mm == pytest.approx(30.0 * spacing)


def test_no_finding_report_has_no_lesions(chest: tuple[list[Dataset], dict[str, ImagePlane]], tmp_path: Path) -> None:
    series, planes = chest
    assert read_sr(_write(_ctnode_sr(series, []), tmp_path / "sr.dcm"), planes) == []


def test_groups_join_by_tracking_identifier_without_uids(
    chest: tuple[list[Dataset], dict[str, ImagePlane]], ctnode_sr: Dataset, findings: list[Finding], tmp_path: Path
) -> None:
    sr = copy.deepcopy(ctnode_sr)
    for group in imaging_measurements(sr).ContentSequence:
        group.ContentSequence = [i for i in group.ContentSequence if i.get("ValueType") != "UIDREF"]
    assert "Tracking Unique Identifier" not in str(sr)
    records = read_sr(_write(sr, tmp_path / "sr.dcm"), chest[1])
    assert [len(r.outlines) for r in records] == [len(f.slices) for f in findings]


def _group(tracking: str, series: Dataset, graphic_type: str, data: list[list[float]]
           ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    region = hd.sr.ImageRegion(graphic_type=graphic_type, graphic_data=np.array(data),
                               source_image=hd.sr.SourceImageForRegion.from_source_image(series))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier=tracking), referenced_region=region,
        finding_type=codes.SCT.Nodule)


def _point_group(tracking: str, point_mm: np.ndarray, series: Dataset,
                 measurement: tuple[DicomCode, float, DicomCode]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    point = hd.sr.CoordinatesForMeasurement3D(graphic_type="POINT", graphic_data=point_mm[None, :],
                                              frame_of_reference_uid=series.FrameOfReferenceUID)
    name, value, unit = measurement
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier=tracking), finding_type=codes.SCT.Mass,
        measurements=[hd.sr.Measurement(name=name, value=value, unit=unit, referenced_coordinates=[point])])


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")
def test_circles_ellipses_and_points_from_other_tools(chest: tuple[list[Dataset], dict[str, ImagePlane]],
                                                     tmp_path: Path) -> None:
    series, planes = chest
    plane = planes[str(series[30].SOPInstanceUID)]
    spacing = plane.pixel_spacing_mm[1]
    centre_mm = plane.to_patient([[300.0, 250.0]])[0]
    groups = [
        _group("circle", series[30], "CIRCLE", [[200.5, 210.5], [210.5, 210.5]]),
        _group("ellipse", series[31], "ELLIPSE", [[100.5, 100.5], [140.5, 100.5], [120.5, 90.5], [120.5, 110.5]]),
        _group("polyline", series[32], "POLYLINE", [[50.5, 50.5], [60.5, 50.5], [60.5, 60.5], [50.5, 50.5]]),
        _group("point", series[33], "POINT", [[400.5, 300.5]]),
        _point_group("sized", centre_mm, series[30], (codes.SCT.Diameter, 1.2, codes.UCUM.Centimeter)),
        _point_group("unsized", centre_mm + 40, series[30], (codes.SCT.Volume, 2.0, MILLILITRE)),
    ]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(), procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(evidence=series, content=report[0], series_instance_uid=hd.UID(), series_number=7,
                                 sop_instance_uid=hd.UID(), instance_number=1, manufacturer="another tool")
    circle, ellipse, triangle, point, sized, unsized = read_sr(_write(sr, tmp_path / "sr.dcm"), planes)
    assert circle.centre_mm == pytest.approx(tuple(plane.to_patient([[200.0, 210.0]])[0]), abs=1e-6)
    assert circle.diameter_mm == pytest.approx(20 * spacing) and circle.label == "Nodule"
    assert ellipse.diameter_mm == pytest.approx(40 * spacing) and len(ellipse.outlines[0].polygon_px) == 32
    assert len(triangle.outlines[0].polygon_px) == 3 and triangle.diameter_mm == pytest.approx(10 * spacing)
    assert not point.outlines and point.diameter_mm == MIN_TARGET_DIAMETER_MM
    assert point.centre_mm == pytest.approx(tuple(planes[str(series[33].SOPInstanceUID)].to_patient([[400, 300]])[0]))
    assert sized.centre_mm == pytest.approx(tuple(centre_mm), abs=1e-3) and sized.diameter_mm == pytest.approx(12.0)
    assert sized.label == "Mass" and not sized.ignore
    assert unsized.diameter_mm == MIN_TARGET_DIAMETER_MM and not unsized.ignore


def _assert_label_error(path: Path, planes: dict[str, ImagePlane], *words: str) -> None:
    with pytest.raises(LabelError) as caught:
        read_sr(path, planes)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def test_unreadable_and_wrong_files_raise_one_line_errors(
    chest: tuple[list[Dataset], dict[str, ImagePlane]], ct_data: Callable[[str], Path], tmp_path: Path
) -> None:
    series, planes = chest
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a DICOM file\n" * 10)
    _assert_label_error(garbage, planes, "not a readable DICOM file")
    image = next((ct_data(CHEST) / "series_5mm_lung_kernel").glob("*.dcm"))
    assert not is_measurement_report(pydicom.dcmread(image, stop_before_pixels=True))
    _assert_label_error(image, planes, "not a DICOM SR")


def test_bad_sr_content_raises_one_line_errors(chest: tuple[list[Dataset], dict[str, ImagePlane]], ctnode_sr: Dataset,
                                               findings: list[Finding], tmp_path: Path) -> None:
    planes, sr = chest[1], ctnode_sr
    missing = findings[1].slices[0].sop_instance_uid
    path = _write(sr, tmp_path / "sr.dcm")
    _assert_label_error(path, {k: v for k, v in planes.items() if k != missing}, missing, "not among the given images")

    empty = copy.deepcopy(sr)
    empty.ContentSequence = [i for i in empty.ContentSequence if i.ValueType != "CONTAINER"]
    _assert_label_error(_write(empty, tmp_path / "empty.dcm"), planes, "no measurement groups")

    broken = copy.deepcopy(sr)
    region = next(i for i in imaging_measurements(broken).ContentSequence[0].ContentSequence if i.ValueType == "SCOORD")
    region.GraphicData = [1.0, 2.0, 3.0]
    _assert_label_error(_write(broken, tmp_path / "broken.dcm"), planes, "malformed SR content")
