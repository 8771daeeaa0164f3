"""The TID 1500 Measurement Report (Comprehensive 3D SR) of a run's findings, in the original study."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from detector.findings import Code as FindingCode
from detector.findings import Finding
from detector.io.context import study_context
from node.reports.coordinates import box_polyline, to_image
from node.reports.captions import finding_name, key_slice
from node.reports.options import ReportRun
from node.reports.prepared import PreparedReport
from node.reports.sources import no_identifier_warnings
from node.events import OutputKind
from node.reports.uids import Part, derive_uid, uid_space

CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")
PERCENT = Code("%", "UCUM", "Percent")
NO_ABNORMALITY = Code("281900007", "SCT", "No abnormality detected")
NO_FINDING_TRACKING_ID = "no findings"
NOT_ANALYSED = Code("CTN-NOT-ANALYSED", "99CTNODE", "Not analysed by the AI")
NOT_ANALYSED_TRACKING_ID = "not analysed"
NOT_ANALYSED_SERIES_DESCRIPTION = "AI result: NOT ANALYSED (not for diagnosis)"
SR_SERIES_DESCRIPTION = "AI findings report (not for diagnosis)"
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")


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


def _certainty(score: float) -> hd.sr.Measurement:
    """Certainty of Finding in percent (score x 100)."""
    return hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=round(score * 100.0, 6), unit=PERCENT)


Group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
MIN_AXIS_MM = 1.0
"""The shortest axis of a finding's outline ellipse (in patient space)."""


def _finding_groups(n: int, finding: Finding, report: PreparedReport, algorithm: hd.sr.AlgorithmIdentification,
                    outline_3d: bool = True) -> list[Group]:
    """The finding's groups: one TID 1410 group per image region (slice), its box, then one TID 1410 group holding
    its certainty, whose region is the finding's outline ellipse (see :func:`_outline`).

    Each region group has a Tracking UID of its own, so a viewer draws and tracks each slice's box; the key
    slice's group shares the finding's Tracking UID with the certainty group, so a viewer that merges groups
    by Tracking UID shows the certainty once, on the key slice. All groups of the finding share its Tracking
    Identifier text and the algorithm's identification, which is how a reader joins them into one finding.

    Why this shape (OHIF 3.13's SR hydration, cornerstone's adapters, reads every group on its own): a group
    with no region at its top level (a TID 1501 group) makes it fail with a TypeError; a group with a numeric
    item has its geometry looked up under its first numeric item, which a TID 1410 measurement (TID 1419) may
    not hold, so a box group with the certainty fails and is not tracked; a group whose region is an ellipse
    matches none of its tools and is passed by, where a 3D point would become a probe. So the boxes hold no
    numeric item, and the certainty is the measurement of the finding's outline ellipse.
    """
    groups: list[Group] = [_region_group(report, n, k, algorithm) for k in range(len(finding.slices))]
    return [*groups, _certainty_group(report, n, algorithm, outline_3d)]


def _certainty_group(report: PreparedReport, n: int, algorithm: hd.sr.AlgorithmIdentification, outline_3d: bool
                     ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """Finding ``n``'s certainty, measured on its outline ellipse, under the finding's own Tracking UID."""
    finding = report.findings[n]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=report.uids.instance(Part.FINDING, n),
                                                     identifier=finding_name(n, finding)),
        referenced_region=_outline(report, finding, outline_3d),
        finding_type=_as_code(finding.finding_type),
        finding_sites=_sites(finding),
        algorithm_id=algorithm,
        measurements=[_certainty(finding.score)],
    )


def _outline(report: PreparedReport, finding: Finding, in_3d: bool = True) -> hd.sr.ImageRegion3D | hd.sr.ImageRegion:
    """The finding's outline ellipse, major axis first. In 3D where the series has a frame of reference: a
    SCOORD3D centred on the finding's 3D centre, parallel to its key slice, its axes its sizes along the rows
    and columns (at least MIN_AXIS_MM), so the midpoint of either axis is the finding's centre. Else (or not
    ``in_3d``) the ellipse inscribed in the key slice's box, on that image."""
    key = key_slice(finding)
    image = report.series.image(key.sop_instance_uid)
    frame = report.series.frame_of_reference_uid
    if frame is None or not in_3d:
        x1, y1, x2, y2 = to_image(key.box_px)
        centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        axes = [np.array([(x2 - x1) / 2, 0.0]), np.array([0.0, (y2 - y1) / 2])]
        return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.ELLIPSE, graphic_data=_ellipse(centre, axes),
                                 source_image=hd.sr.SourceImageForRegion.from_source_image(image))
    orientation = np.array([float(v) for v in image.ImageOrientationPatient])
    along = (orientation[:3] / np.linalg.norm(orientation[:3]), orientation[3:] / np.linalg.norm(orientation[3:]))
    axes = [max(size, MIN_AXIS_MM) / 2 * d for d, size in zip(along, finding.size_mm[:2])]
    return hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSE,
                               graphic_data=_ellipse(np.asarray(finding.centre_mm, dtype=float), axes),
                               frame_of_reference_uid=frame)


def _ellipse(centre: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    """ELLIPSE graphic data: the end points of the major axis, then of the minor one (PS3.3 C.18.6.1.2)."""
    major, minor = sorted(axes, key=lambda a: -float(np.linalg.norm(a)))
    return np.array([centre - major, centre + major, centre - minor, centre + minor], dtype=float)


def _sites(finding: Finding) -> list[hd.sr.FindingSite] | None:
    return [hd.sr.FindingSite(_as_code(finding.finding_site))] if finding.finding_site is not None else None


def _region_group(report: PreparedReport, n: int, k: int, algorithm: hd.sr.AlgorithmIdentification
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
    )


def _no_finding_group(
    report: PreparedReport, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group stating explicitly that the algorithm found nothing in the read series."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=report.uids.instance(Part.FINDING, 0), identifier=NO_FINDING_TRACKING_ID
        ),
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=NO_ABNORMALITY)],
    )


@no_identifier_warnings()
def build_sr(report: PreparedReport) -> hd.sr.Comprehensive3DSR:
    """The run's Comprehensive 3D SR (TID 1500) in the source study: per finding, one group per image region
    and one with its certainty on its outline (about its 3D centre); an explicit "no abnormality" group when
    there is none."""
    run = report.run
    algorithm = algorithm_identification(run)
    # One box in the whole report: pixelmed's validator then checks every group as TID 1410, whose 3D region it
    # does not know (its templates predate it), so the lone finding's outline is drawn on its image, without
    # the 3D centre.
    outline_3d = sum(len(f.slices) for f in run.findings) > 1
    groups: list[Group] = [group for n, finding in enumerate(run.findings)
                          for group in _finding_groups(n, finding, report, algorithm, outline_3d)]
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
        tracking_identifier=hd.sr.TrackingIdentifier(uid=report.uids.instance(Part.FINDING, 0),
                                                     identifier=NOT_ANALYSED_TRACKING_ID),
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=NOT_ANALYSED)],
    )
    return _measurement_report(report, [group], NOT_ANALYSED_SERIES_DESCRIPTION)


def _context_items(run: ReportRun) -> hd.sr.ContainerContentItem | None:
    """The study's context as TID 1500's Qualitative Evaluations (its rows 12 and 14: TEXT items): Subject Age and
    Subject Sex, then each referral line as an Indication for Procedure; None when the headers state none."""
    context = study_context(run.sources)
    texts = [*([(codes.DCM.SubjectAge, f"{context.age_years:g} years")] if context.age_years is not None else []),
             *([(codes.DCM.SubjectSex, context.sex)] if context.sex is not None else []),
             *((codes.DCM.IndicationsForProcedure, line) for line in context.referral)]
    if not texts:
        return None
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = [hd.sr.TextContentItem(name=name, value=value,
                                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
                                 for name, value in texts]
    return container


def _measurement_report(report: PreparedReport, groups: Sequence[Group], description: str) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 document of ``groups``, observed by the run's model as a device, in the source study."""
    run, options = report.run, report.options
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid(options.uid_root, uid_space(Part.DEVICE), run.algorithm.name, run.algorithm.version),
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
    context = _context_items(run)
    if context is not None:
        content[0].ContentSequence.append(context)
    sr = hd.sr.Comprehensive3DSR(
        evidence=report.series.headers(),
        content=content[0],
        **report.identity(OutputKind.SR),
        institution_name=options.institution_name,
        institutional_department_name=options.institutional_department_name,
        is_complete=True,
        is_final=True,
        previous_versions=[e.as_dataset() for e in run.earlier_reports] or None,
        series_description=description,
    )
    report.stamp(sr)
    return sr
