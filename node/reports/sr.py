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
from node.reports.options import ReportOptions, ReportRun
from node.reports.sources import SourceSeries, no_identifier_warnings
from node.reports.uids import ObjectKind, RunUids, derive_uid, object_identity

CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")
PERCENT = Code("%", "UCUM", "Percent")
NO_ABNORMALITY = Code("281900007", "SCT", "No abnormality detected")
NO_FINDING_TRACKING_ID = "no findings"
SR_SERIES_DESCRIPTION = "AI findings report (not for diagnosis)"


def algorithm_identification(run: ReportRun) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for the run's model: name, version, weights digest (+ parameters), family Artificial Intelligence."""
    return hd.sr.AlgorithmIdentification(
        name=run.algorithm.name,
        version=run.algorithm.version,
        parameters=list(run.algorithm.all_parameters),
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


def _finding_groups(
    n: int, finding: Finding, series: SourceSeries, uids: RunUids, algorithm: hd.sr.AlgorithmIdentification
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations]:
    """The finding's TID 1411 group (per-slice 2D boxes) and its TID 1501 companion holding the 3D centre
    (left out when the series has no frame of reference to put it in).

    TID 1410/1411 admit 2D regions or a 3D region, not both, and their measurements (TID 1419) take no
    coordinates; TID 1501's measurements may be inferred from SCOORD3D (TID 320). Both groups carry the same
    tracking identifier and UID, which is how TID 1500 ties groups describing one finding.
    """
    tracking = hd.sr.TrackingIdentifier(
        uid=uids.instance(ObjectKind.FINDING, n), identifier=finding.tracking_id or f"finding {n + 1}"
    )
    finding_type = _as_code(finding.finding_type)
    sites = [hd.sr.FindingSite(_as_code(finding.finding_site))] if finding.finding_site is not None else None
    regions = [
        hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=box_polyline(box.box_px),
            source_image=hd.sr.SourceImageForRegion.from_source_image(series.image(box.sop_instance_uid)),
        )
        for box in finding.slices
    ]
    roi_group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_regions=regions,
        finding_type=finding_type,
        finding_sites=sites,
        algorithm_id=algorithm,
        measurements=[_certainty(finding.score)],
    )
    if series.frame_of_reference_uid is None:
        return [roi_group]
    centre = hd.sr.CoordinatesForMeasurement3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([finding.centre_mm], dtype=float),
        frame_of_reference_uid=series.frame_of_reference_uid,
        purpose=codes.DCM.Center,
    )
    centre_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding_type,
        finding_sites=sites,
        algorithm_id=algorithm,
        measurements=[_certainty(finding.score, centre)],
    )
    return [roi_group, centre_group]


def _no_finding_group(
    uids: RunUids, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group stating explicitly that the algorithm found nothing in the read series."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.instance(ObjectKind.FINDING, 0), identifier=NO_FINDING_TRACKING_ID
        ),
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=NO_ABNORMALITY)],
    )


@no_identifier_warnings()
def build_sr(run: ReportRun, options: ReportOptions) -> hd.sr.Comprehensive3DSR:
    """The run's Comprehensive 3D SR (TID 1500) in the source study; one finding-group pair per finding."""
    series = SourceSeries(run.sources)
    series.check_findings(run.findings)
    uids = RunUids(options.uid_root, run.run_id)
    algorithm = algorithm_identification(run)
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for n, finding in enumerate(run.findings):
        groups.extend(_finding_groups(n, finding, series, uids, algorithm))
    if sum(len(f.slices) for f in run.findings) == 1:
        # One 2D region in the whole report: pixelmed's validator then checks every group as TID 1410 and
        # rejects the TID 1501 centre group, so the lone finding keeps only its region group (its centre is
        # that box's centre on its one image).
        groups = groups[:1]
    if not groups:
        groups.append(_no_finding_group(uids, algorithm))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid(options.uid_root, ObjectKind.DEVICE.value, run.algorithm.name, run.algorithm.version),
            name=run.algorithm.name,
            manufacturer_name=options.manufacturer,
            model_name=f"{run.algorithm.name} {run.algorithm.version}",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=series.headers(),
        content=report[0],
        **object_identity(uids, ObjectKind.SR, 0, options.series_number_base, options.manufacturer),
        institution_name=options.institution_name,
        institutional_department_name=options.institutional_department_name,
        is_complete=True,
        is_final=True,
        previous_versions=[e.as_dataset() for e in run.earlier_reports] or None,
        series_description=SR_SERIES_DESCRIPTION,
    )


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
    """The findings of a ctnode TID 1500 SR (an empty list for the explicit no-finding report)."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("the SR's content is not a TID 1500 Measurement Report")
    centres: dict[str, tuple[float, float, float]] = {}
    for group in report.get_image_measurement_groups():
        for m in group.get_measurements(name=CERTAINTY_OF_FINDING):
            for coords in m.referenced_coordinates or []:
                if isinstance(coords, hd.sr.Scoord3DContentItem):
                    x, y, z = coords.value[0]
                    centres[str(group.tracking_uid)] = (float(x), float(y), float(z))
    found = []
    for group in report.get_volumetric_roi_measurement_groups():
        boxes = {}
        for region in group.roi or []:
            points = region.value
            x1, y1 = points.min(axis=0)
            x2, y2 = points.max(axis=0)
            boxes[str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)] = from_image(
                (float(x1), float(y1), float(x2), float(y2))
            )
        sites = group.finding_sites
        found.append(
            ReportedFinding(
                tracking_id=str(group.tracking_identifier),
                tracking_uid=str(group.tracking_uid),
                finding_type=_code(group.finding_type),
                finding_site=_code(sites[0].value) if sites else None,
                score=_score(group.get_measurements()),
                boxes=boxes,
                centre_mm=centres.get(str(group.tracking_uid)),
            )
        )
    return found
