"""The TID 1500 Measurement Report (Comprehensive 3D SR) of a run's findings, in the original study, and its reader."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from detector.findings import Code as FindingCode
from detector.findings import Finding
from node.reports.coordinates import box_polyline, from_image
from node.reports.findings import finding_name
from node.reports.options import ReportRun
from node.reports.prepared import PreparedReport
from node.reports.sources import no_identifier_warnings
from node.reports.uids import ObjectKind, derive_uid

CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")
PERCENT = Code("%", "UCUM", "Percent")
NO_ABNORMALITY = Code("281900007", "SCT", "No abnormality detected")
NO_FINDING_TRACKING_ID = "no findings"
NOT_ANALYSED = Code("CTN-NOT-ANALYSED", "99CTNODE", "Not analysed by the AI")
NOT_ANALYSED_TRACKING_ID = "not analysed"
NOT_ANALYSED_SERIES_DESCRIPTION = "AI result: NOT ANALYSED (not for diagnosis)"
SR_SERIES_DESCRIPTION = "AI findings report (not for diagnosis)"


def algorithm_identification(run: ReportRun) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for the run's model: name, version, weights digest (+ parameters), family Artificial Intelligence."""
    return hd.sr.AlgorithmIdentification(
        name=run.algorithm.name,
        version=run.algorithm.version,
        parameters=[*run.algorithm.all_parameters, *([run.notice] if run.notice is not None else [])],
        family=codes.cid7162.ArtificialIntelligence,
    )


def _as_code(code: FindingCode) -> Code:
    return Code(code.value, code.scheme, code.meaning)


def _certainty(score: float, centre: hd.sr.CoordinatesForMeasurement3D | None = None) -> hd.sr.Measurement:
    """Certainty of Finding in percent (score x 100), optionally inferred from the finding's 3D centre."""
    return hd.sr.Measurement(
        name=CERTAINTY_OF_FINDING,
        value=round(score * 100.0, 6),
        unit=PERCENT,
        referenced_coordinates=[centre] if centre is not None else None,
    )


Group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations


def _finding_groups(n: int, finding: Finding, report: PreparedReport,
                    algorithm: hd.sr.AlgorithmIdentification) -> list[Group]:
    """The finding's groups: one TID 1410 group per image region (slice), then one TID 1501 group holding its
    certainty, inferred from its 3D centre when the series has a frame of reference.

    Each region group has a Tracking UID of its own, so a viewer draws and tracks each slice's box; the key
    slice's group shares the finding's Tracking UID with the certainty group, so a viewer that merges groups
    by Tracking UID shows the certainty once, on the key slice. All groups of the finding share its Tracking
    Identifier text and the algorithm's identification, which is how a reader joins them into one finding.
    The region groups hold no numeric item: TID 1410 measurements (TID 1419) take no coordinates, and a
    viewer loading a group with a numeric item looks for the group's geometry under that item.
    """
    groups: list[Group] = [_region_group(report, n, k, algorithm) for k in range(len(finding.slices))]
    series = report.series
    centre = None
    if series.frame_of_reference_uid is not None:
        centre = hd.sr.CoordinatesForMeasurement3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.array([finding.centre_mm], dtype=float),
            frame_of_reference_uid=series.frame_of_reference_uid,
            purpose=codes.DCM.Center,
        )
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=report.uids.instance(ObjectKind.FINDING, n),
                                                     identifier=finding_name(n, finding)),
        finding_type=_as_code(finding.finding_type),
        finding_sites=_sites(finding),
        algorithm_id=algorithm,
        measurements=[_certainty(finding.score, centre)],
    ))
    return groups


def _sites(finding: Finding) -> list[hd.sr.FindingSite] | None:
    return [hd.sr.FindingSite(_as_code(finding.finding_site))] if finding.finding_site is not None else None


def _region_group(report: PreparedReport, n: int, k: int, algorithm: hd.sr.AlgorithmIdentification,
                  measurements: list[hd.sr.Measurement] | None = None
                  ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The TID 1410 group of the ``k``-th image region (slice) of finding ``n``: its box on its image."""
    finding = report.findings[n]
    box = finding.slices[k]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=report.region_uid(n, k), identifier=finding_name(n, finding)),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=box_polyline(box.box_px),
            source_image=hd.sr.SourceImageForRegion.from_source_image(report.series.image(box.sop_instance_uid)),
        ),
        finding_type=_as_code(finding.finding_type),
        finding_sites=_sites(finding),
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _no_finding_group(
    report: PreparedReport, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group stating explicitly that the algorithm found nothing in the read series."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=report.uids.instance(ObjectKind.FINDING, 0), identifier=NO_FINDING_TRACKING_ID
        ),
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=NO_ABNORMALITY)],
    )


@no_identifier_warnings()
def build_sr(report: PreparedReport) -> hd.sr.Comprehensive3DSR:
    """The run's Comprehensive 3D SR (TID 1500) in the source study: per finding, one group per image region
    and one with its certainty (and 3D centre); an explicit "no abnormality" group when there is none."""
    run = report.run
    algorithm = algorithm_identification(run)
    groups: list[Group]
    if sum(len(f.slices) for f in run.findings) == 1:
        # One 2D region in the whole report: pixelmed's validator then checks every group as TID 1410 and
        # rejects a TID 1501 group, so the lone finding's certainty joins its region's group.
        groups = [_region_group(report, 0, 0, algorithm, [_certainty(run.findings[0].score)])]
    else:
        groups = [group for n, finding in enumerate(run.findings)
                  for group in _finding_groups(n, finding, report, algorithm)]
    if not groups:
        groups = [_no_finding_group(report, algorithm)]
    return _measurement_report(report, groups, run.series_description("AI findings report", SR_SERIES_DESCRIPTION))


@no_identifier_warnings()
def build_not_analysed_sr(report: PreparedReport, reason: str) -> hd.sr.Comprehensive3DSR:
    """The SR of a study the model did not read: one TID 1501 group whose finding is "Not analysed by the AI",
    the reason among the algorithm's parameters (TID 4019), so that no one takes the silence for a negative."""
    run = report.run
    algorithm = hd.sr.AlgorithmIdentification(
        name=run.algorithm.name, version=run.algorithm.version,
        parameters=[*run.algorithm.all_parameters, f"not analysed: {reason}"[:1024]],
        family=codes.cid7162.ArtificialIntelligence)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=report.uids.instance(ObjectKind.FINDING, 0),
                                                     identifier=NOT_ANALYSED_TRACKING_ID),
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=NOT_ANALYSED)],
    )
    return _measurement_report(report, [group], NOT_ANALYSED_SERIES_DESCRIPTION)


def _measurement_report(report: PreparedReport, groups: Sequence[Group], description: str) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 document of ``groups``, observed by the run's model as a device, in the source study."""
    run, options = report.run, report.options
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid(options.uid_root, ObjectKind.DEVICE.value, run.algorithm.name, run.algorithm.version),
            name=run.algorithm.name,
            manufacturer_name=options.manufacturer,
            model_name=f"{run.algorithm.name} {run.algorithm.version}",
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=list(groups),
        title=codes.cid7021.ImagingMeasurementReport,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=report.series.headers(),
        content=content[0],
        **report.identity(ObjectKind.SR),
        institution_name=options.institution_name,
        institutional_department_name=options.institutional_department_name,
        is_complete=True,
        is_final=True,
        previous_versions=[e.as_dataset() for e in run.earlier_reports] or None,
        series_description=description,
    )
    report.stamp(sr)
    return sr


@dataclass(frozen=True)
class ReportedFinding:
    """A finding as read back from an SR: tracking, codes, certainty (0..1), per-image boxes, 3D centre.

    ``boxes`` are in index coordinates, like detector.findings.SliceBox (converted back from SCOORD).
    """

    tracking_id: str
    tracking_uid: str
    finding_type: Code
    finding_site: Code | None
    score: float
    boxes: dict[str, tuple[float, float, float, float]]
    centre_mm: tuple[float, float, float] | None


def _code(concept: hd.sr.CodedConcept) -> Code:
    return Code(concept.value, concept.scheme_designator, concept.meaning)


def _score(measurements: Sequence[hd.sr.Measurement]) -> float:
    for m in measurements:
        if m.name == CERTAINTY_OF_FINDING:
            return float(m.value) / 100.0
    raise ValueError("measurement group has no Certainty of Finding")


def read_findings(sr: Dataset) -> list[ReportedFinding]:
    """The findings of a ctnode TID 1500 SR (an empty list for the explicit no-finding report).

    A finding's groups share its Tracking Identifier text: its image regions' groups give its boxes, its
    certainty group (or, for a lone region, the region's group) its certainty, tracking UID and 3D centre.
    """
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("the SR's content is not a TID 1500 Measurement Report")
    boxes: dict[str, dict[str, tuple[float, float, float, float]]] = {}
    for group in report.get_planar_roi_measurement_groups():
        region = group.roi
        points = region.value
        x1, y1 = points.min(axis=0)
        x2, y2 = points.max(axis=0)
        image = str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        boxes.setdefault(str(group.tracking_identifier), {})[image] = from_image(
            (float(x1), float(y1), float(x2), float(y2)))
    found = []
    scored = [*report.get_image_measurement_groups(), *report.get_planar_roi_measurement_groups()]
    for group in scored:
        certainty = group.get_measurements(name=CERTAINTY_OF_FINDING)
        if not certainty:
            continue
        centre = None
        for coords in certainty[0].referenced_coordinates or []:
            if isinstance(coords, hd.sr.Scoord3DContentItem):
                x, y, z = coords.value[0]
                centre = (float(x), float(y), float(z))
        sites = group.finding_sites
        name = str(group.tracking_identifier)
        found.append(
            ReportedFinding(
                tracking_id=name,
                tracking_uid=str(group.tracking_uid),
                finding_type=_code(group.finding_type),
                finding_site=_code(sites[0].value) if sites else None,
                score=_score(certainty),
                boxes=boxes.get(name, {}),
                centre_mm=centre,
            )
        )
    return found
