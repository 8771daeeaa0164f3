"""The TID 1500 SR: round trip of every finding, explicit no-finding report, predecessors, study and UIDs."""

from __future__ import annotations

import copy
from dataclasses import replace
from io import BytesIO

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from detector.findings import Finding
from detector.labels.tid1500 import measurement_groups
from node.reports import (
    AlgorithmIdentity,
    EarlierReport,
    PreparedReport,
    ReportOptions,
    ReportRun,
    build_sr,
)
from node.reports.captions import key_slice
from node.reports.sr import CERTAINTY_OF_FINDING, NO_ABNORMALITY, NO_FINDING_TRACKING_ID
from tests.support import imaging_measurements


def _reread(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _boxes(sr: Dataset) -> dict[str, dict[str, tuple[float, ...]]]:
    """Each finding's boxes (index coordinates) by image, as a reader of the SR gets them: POLYLINE regions."""
    boxes: dict[str, dict[str, tuple[float, ...]]] = {}
    for group in measurement_groups(sr):
        for region in group.regions:
            if region.graphic_type == "POLYLINE":
                points = np.asarray(region.points) - 0.5  # image -> index coordinates
                boxes.setdefault(str(group.tracking_identifier), {})[region.sop_instance_uid] = (
                    *points.min(axis=0), *points.max(axis=0))
    return boxes


def _certainties(sr: Dataset) -> list[tuple[str, str, float, str, str | None]]:
    """(tracking identifier, tracking UID, certainty 0..1, finding type code, finding site code) of every group
    that states a certainty."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    found = []
    for group in [*report.get_image_measurement_groups(), *report.get_planar_roi_measurement_groups()]:
        for measurement in group.get_measurements(name=CERTAINTY_OF_FINDING):
            sites = group.finding_sites
            found.append((str(group.tracking_identifier), str(group.tracking_uid), float(measurement.value) / 100,
                          group.finding_type.value, sites[0].value.value if sites else None))
    return found


def _findings(chest_series: list[Dataset], chest_tumour: Finding) -> list[Finding]:
    """The annotated tumour plus a second, single-slice finding elsewhere on the series."""
    other = sorted(chest_series, key=lambda ds: float(ds.ImagePositionPatient[2]))[40]
    second = replace(
        chest_tumour, score=0.42, tracking_id="", centre_mm=(-50.5, 20.25, float(other.ImagePositionPatient[2])),
        slices=(replace(chest_tumour.slices[0], sop_instance_uid=str(other.SOPInstanceUID),
                        box_px=(100.0, 120.5, 130.0, 150.0)),),
    )
    return [chest_tumour, second]


def test_round_trip_reads_back_every_finding(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity
) -> None:
    findings = _findings(chest_series, chest_tumour)
    sr = _reread(build_sr(PreparedReport.of(ReportRun("run-1", chest_series, findings, algorithm), ReportOptions())))
    certainties = _certainties(sr)
    assert [c[0] for c in certainties] == ["lesion A", "finding 2"]
    assert len({c[1] for c in certainties}) == 2
    boxes = _boxes(sr)
    groups = {g.tracking_identifier: g for g in measurement_groups(sr) if g.points_mm}  # the certainty groups
    for finding, (name, _, score, finding_type, site) in zip(findings, certainties, strict=True):
        assert score == pytest.approx(finding.score, abs=1e-9)
        assert finding_type == finding.finding_type.value and site == "39607008"
        assert boxes[name] == {s.sop_instance_uid: s.box_px for s in finding.slices}
        centre = np.mean(groups[name].points_mm, axis=0)  # the middle of the outline ellipse's axes
        assert centre == pytest.approx(finding.centre_mm, abs=1e-3)  # SCOORD3D holds float32


def test_sr_joins_the_original_study_with_its_patient_and_evidence(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity
) -> None:
    sr = build_sr(PreparedReport.of(ReportRun("run-1", chest_series, [chest_tumour], algorithm), ReportOptions()))
    source = chest_series[0]
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sr.PatientID, sr.PatientName, sr.PatientSex) == (source.PatientID, source.PatientName, source.PatientSex)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert {i.ReferencedSOPInstanceUID for i in evidence} == {ds.SOPInstanceUID for ds in chest_series}
    texts = _values(sr)
    assert {algorithm.name, algorithm.version, f"weights_sha256={algorithm.weights_sha256}"} <= texts
    assert "Artificial Intelligence" in texts


def _values(item: Dataset) -> set[str]:
    """Every text value and code meaning in the content tree under ``item``."""
    found = set()
    for child in item.get("ContentSequence", []):
        if "TextValue" in child:
            found.add(str(child.TextValue))
        if "ConceptCodeSequence" in child:
            found.add(str(child.ConceptCodeSequence[0].CodeMeaning))
        found |= _values(child)
    return found


def test_sr_without_findings_says_so(chest_series: list[Dataset], algorithm: AlgorithmIdentity) -> None:
    sr = _reread(build_sr(PreparedReport.of(ReportRun("run-1", chest_series, [], algorithm), ReportOptions())))
    assert [(g.tracking_identifier, g.regions, g.points_mm) for g in measurement_groups(sr)] == [
        (NO_FINDING_TRACKING_ID, (), ())]
    assert _certainties(sr) == []
    container = imaging_measurements(sr)
    assert container.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImagingMeasurements.value
    group = container.ContentSequence[0].ContentSequence
    assert any(getattr(i, "TextValue", None) == NO_FINDING_TRACKING_ID for i in group)
    statements = [
        i for i in group if i.ValueType == "CODE" and i.ConceptCodeSequence[0].CodeValue == NO_ABNORMALITY.value
    ]
    assert statements and statements[0].ConceptNameCodeSequence[0].CodeMeaning == "Finding"


def test_rerun_names_the_earlier_sr_as_predecessor(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity
) -> None:
    first = build_sr(PreparedReport.of(ReportRun("study-x/v1", chest_series, [chest_tumour], algorithm), ReportOptions()))
    earlier = EarlierReport(first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID, first.SOPClassUID)
    second = build_sr(PreparedReport.of(ReportRun("study-x/v2", chest_series, [chest_tumour], algorithm, [earlier]), ReportOptions()))
    assert "PredecessorDocumentsSequence" not in first
    study = second.PredecessorDocumentsSequence[0]
    assert study.StudyInstanceUID == first.StudyInstanceUID
    assert study.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID


def test_uids_are_stable_across_builds_and_differ_across_runs(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity
) -> None:
    def uids(run_id: str) -> list[str]:
        sr = build_sr(PreparedReport.of(ReportRun(run_id, chest_series, [chest_tumour], algorithm), ReportOptions()))
        return [sr.SOPInstanceUID, sr.SeriesInstanceUID, *(g.tracking_uid for g in measurement_groups(sr))]

    assert uids("run-1") == uids("run-1")
    assert not set(uids("run-1")) & set(uids("run-2"))


def test_head_series_without_birth_date_gets_an_empty_one(
    head_series: list[Dataset], head_bleed: Finding, algorithm: AlgorithmIdentity
) -> None:
    assert "PatientBirthDate" not in head_series[0]
    sr = _reread(build_sr(PreparedReport.of(ReportRun("run-h", head_series, [head_bleed], algorithm), ReportOptions())))
    assert sr.PatientBirthDate == ""
    assert "PatientBirthDate" not in head_series[0], "the caller's datasets must not be modified"
    assert list(_boxes(sr).values()) == [{s.sop_instance_uid: s.box_px for s in head_bleed.slices}]


def test_inconsistent_input_is_refused_with_the_reason(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity
) -> None:
    outside = replace(chest_tumour, slices=(replace(chest_tumour.slices[0], box_px=(500.0, 10.0, 520.0, 30.0)),))
    with pytest.raises(ValueError, match="is not inside the 512x512 image"):
        build_sr(PreparedReport.of(ReportRun("r", chest_series, [outside], algorithm), ReportOptions()))
    foreign = replace(chest_tumour, slices=(replace(chest_tumour.slices[0], sop_instance_uid="1.2.3.4"),))
    with pytest.raises(KeyError, match="not in the read series"):
        build_sr(PreparedReport.of(ReportRun("r", chest_series, [foreign], algorithm), ReportOptions()))
    with pytest.raises(ValueError, match="share one SeriesInstanceUID"):
        other = copy.deepcopy(chest_series[0])
        other.SeriesInstanceUID = "1.2.3.4.5"
        other.SOPInstanceUID = "1.2.3.4.6"
        build_sr(PreparedReport.of(ReportRun("r", [*chest_series, other], [], algorithm), ReportOptions()))
    with pytest.raises(ValueError, match="64 lower-case hex digits"):
        AlgorithmIdentity("m", "1", "not-a-digest")


def test_every_image_region_is_its_own_tracked_group_and_the_certainty_is_stated_once(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity
) -> None:
    findings = _findings(chest_series, chest_tumour)
    sr = _reread(build_sr(PreparedReport.of(ReportRun("run-1", chest_series, findings, algorithm), ReportOptions())))
    groups = imaging_measurements(sr).ContentSequence
    regions = [g for g in groups if any(i.ValueType == "SCOORD" for i in g.ContentSequence)]
    assert len(regions) == sum(len(f.slices) for f in findings) == 12
    uids = [next(i.UID for i in g.ContentSequence if i.ValueType == "UIDREF") for g in groups]
    assert len(set(uids[:11] + uids[12:13])) == 12, "every region is tracked on its own"
    key = findings[0].slices.index(key_slice(findings[0]))
    assert uids[11] == uids[key] and uids[13] == uids[12], "a finding's certainty shares its key slice's UID"
    for group in regions:
        kinds = [i.ValueType for i in group.ContentSequence]
        assert kinds.count("SCOORD") == 1 and "NUM" not in kinds, "a region group: one box, no numeric item"
        meanings = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in group.ContentSequence}
        assert meanings["Finding"].ConceptCodeSequence[0].CodeMeaning == "Neoplasm"
        assert meanings["Finding Site"].ConceptCodeSequence[0].CodeMeaning == "Lung"
    certainties = [i for g in groups for i in g.ContentSequence if i.ValueType == "NUM"]
    assert len(certainties) == len(findings), "the certainty once per finding"
    for index, finding in ((11, findings[0]), (13, findings[1])):  # each finding's certainty group
        items = groups[index].ContentSequence
        kinds = [i.ValueType for i in items]
        assert kinds.count("NUM") == 1 and kinds.count("SCOORD3D") == 1 and "SCOORD" not in kinds
        assert "ContentSequence" not in next(i for i in items if i.ValueType == "NUM"), \
            "a TID 1410 measurement holds no coordinates"
        outline = next(i for i in items if i.ValueType == "SCOORD3D")
        assert outline.GraphicType == "ELLIPSE" and outline.ConceptNameCodeSequence[0].CodeMeaning == "Image Region"
        ends = np.reshape(np.asarray(outline.GraphicData, dtype=float), (-1, 3))
        for axis in (ends[:2], ends[2:]):
            assert axis.mean(axis=0) == pytest.approx(finding.centre_mm, abs=1e-3), "centred on the 3D centre"
    for group in groups:  # OHIF reads each group on its own: a region at its top level, a box without a number
        regions = [i for i in group.ContentSequence if i.ValueType in ("SCOORD", "SCOORD3D")]
        assert len(regions) == 1
        assert regions[0].GraphicType == "ELLIPSE" or all(i.ValueType != "NUM" for i in group.ContentSequence)
    names = [next(i.TextValue for i in g.ContentSequence if i.ValueType == "TEXT") for g in groups]
    assert names == ["lesion A"] * 12 + ["finding 2"] * 2


@pytest.mark.parametrize("frame", [True, False], ids=["frame-of-reference", "no-frame-of-reference"])
def test_a_lone_region_and_a_series_without_frame_draw_the_outline_on_the_key_image(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity, frame: bool
) -> None:
    """The report's only box, or a series without a frame of reference: the certainty group's outline is the
    ellipse inscribed in the key slice's box, on that image (no 3D centre), and the box holds no number."""
    series = chest_series if frame else [copy.deepcopy(ds) for ds in chest_series]
    for ds in ([] if frame else series):
        del ds.FrameOfReferenceUID
    finding = chest_tumour if not frame else replace(chest_tumour, slices=(key_slice(chest_tumour),))
    sr = _reread(build_sr(PreparedReport.of(ReportRun("run-1", series, [finding], algorithm), ReportOptions())))
    *boxes, certainty = imaging_measurements(sr).ContentSequence
    assert len(boxes) == len(finding.slices)
    assert all("NUM" not in [i.ValueType for i in g.ContentSequence] for g in boxes)
    [outline] = [i for i in certainty.ContentSequence if i.ValueType == "SCOORD"]
    key = key_slice(finding)
    assert outline.GraphicType == "ELLIPSE"
    assert outline.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == key.sop_instance_uid
    x1, y1, x2, y2 = key.box_px
    ends = np.reshape(np.asarray(outline.GraphicData, dtype=float), (-1, 2)) - 0.5  # image -> index coordinates
    assert sorted(map(tuple, ends.round(3))) == sorted(
        [(x1, (y1 + y2) / 2), (x2, (y1 + y2) / 2), ((x1 + x2) / 2, y1), ((x1 + x2) / 2, y2)]), "inscribed in the box"
    assert list(_boxes(sr).values()) == [{s.sop_instance_uid: s.box_px for s in finding.slices}], \
        "the outline is not a box"
    [(_, _, score, _, _)] = _certainties(sr)
    assert score == pytest.approx(finding.score)
    assert not any(g.points_mm for g in measurement_groups(sr)), "no 3D centre"
