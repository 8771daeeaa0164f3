"""Secondary Capture overlays: each finding's key slice with boxes, labels and banner, plus one summary per study."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from detector.findings import Finding
from node.reports.captions import finding_caption, key_slice
from node.reports.prepared import PreparedReport
from node.reports.render import DrawnBox, render_slice, render_summary, windowed_gray
from node.reports.sources import copy_anatomy, no_identifier_warnings
from node.events import OutputKind

SC_SERIES_DESCRIPTION = "AI findings overlay (not for diagnosis)"
NOT_ANALYSED_SC_DESCRIPTION = "AI result: NOT ANALYSED (page)"
_SUMMARY_LINES = 10


def _boxes_on(sop_instance_uid: str, findings: Sequence[Finding]) -> list[DrawnBox]:
    """Every finding's box on that image, captioned."""
    return [
        DrawnBox(box.box_px, finding_caption(n, finding))
        for n, finding in enumerate(findings)
        for box in finding.slices
        if box.sop_instance_uid == sop_instance_uid
    ]


def _footer(report: PreparedReport) -> str:
    return f"ctnode {report.algorithm.name} {report.algorithm.version}"


def _references(images: Sequence[Dataset]) -> list[Dataset]:
    items = []
    for image in images:
        item = Dataset()
        item.ReferencedSOPClassUID = image.SOPClassUID
        item.ReferencedSOPInstanceUID = image.SOPInstanceUID
        items.append(item)
    return items


def _secondary_capture(
    report: PreparedReport,
    pixels: np.ndarray,
    sources: Sequence[Dataset],
    index: int,
    derivation: str,
    pixel_spacing: tuple[float, float] | None,
    description: str | None = None,
) -> hd.sc.SCImage:
    """An RGB SC in the source study, referencing ``sources`` and their frame of reference, text burned in."""
    series = report.series
    header = series.headers([str(sources[0].SOPInstanceUID)])[0]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        **report.identity(OutputKind.SC, index),
        pixel_spacing=pixel_spacing,
        patient_orientation=series.patient_orientation(),
        series_description=description or report.run.series_description("AI findings overlay", SC_SERIES_DESCRIPTION),
    )
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    if series.frame_of_reference_uid is not None:
        sc.FrameOfReferenceUID = series.frame_of_reference_uid
    sc.DerivationDescription = derivation
    sc.SourceImageSequence = _references(sources)
    sc.ReferencedImageSequence = _references(sources)
    copy_anatomy(header, sc)
    if report.options.institution_name is not None:
        sc.InstitutionName = report.options.institution_name
    report.stamp(sc)
    return sc


@no_identifier_warnings()
def build_secondary_captures(report: PreparedReport) -> list[hd.sc.SCImage]:
    """One overlay SC per finding (its key slice, all boxes on it drawn), then the study summary SC last."""
    series, options = report.series, report.options
    captures = []
    crops = []
    centre, width = options.display_window()
    for n, finding in enumerate(report.findings):
        key = series.image(key_slice(finding).sop_instance_uid)
        hu = series.hounsfield(str(key.SOPInstanceUID))
        gray = windowed_gray(hu, centre, width)
        pixels = render_slice(gray, _boxes_on(str(key.SOPInstanceUID), report.findings), options.banner_text,
                              _footer(report))
        spacing = tuple(float(v) for v in key.PixelSpacing)
        captures.append(
            _secondary_capture(
                report, pixels, [key], n,
                f"AI finding {n + 1} boxes burned into the CT slice, window C{centre:g} W{width:g}",
                (spacing[0], spacing[1]),
            )
        )
        crops.append(_crop_around(pixels, key_slice(finding).box_px))
    captures.append(_summary(report, crops))
    return captures


@no_identifier_warnings()
def build_not_analysed_page(report: PreparedReport, reason: str) -> hd.sc.SCImage:
    """One page for a study the model did not read: NOT ANALYSED, why, and that no finding is implied."""
    lines = [_footer(report), "NOT ANALYSED BY THE AI", "Absence of AI findings means nothing here.", "Reason:",
             *textwrap.wrap(reason, 48)[:_SUMMARY_LINES - 4]]
    pixels = render_summary([], lines, report.options.banner_text)
    return _secondary_capture(report, pixels, [report.series.first], 0,
                              "AI result page: the study was not analysed, rendered as text", None,
                              NOT_ANALYSED_SC_DESCRIPTION)


def _crop_around(pixels: np.ndarray, box_px: tuple[float, float, float, float]) -> np.ndarray:
    """A square crop of the rendered slice centred on the box, three box sizes wide (at least 96 px)."""
    rows, columns = pixels.shape[:2]
    x1, y1, x2, y2 = box_px
    side = int(min(max(3 * max(x2 - x1, y2 - y1), 96), rows, columns))
    left = int(np.clip((x1 + x2 - side) / 2, 0, columns - side))
    top = int(np.clip((y1 + y2 - side) / 2, 0, rows - side))
    return pixels[top:top + side, left:left + side]


def _summary(report: PreparedReport, crops: Sequence[np.ndarray]) -> hd.sc.SCImage:
    """The study summary page: model, finding count, one line and one crop per finding."""
    findings, series = report.findings, report.series
    lines = [_footer(report), f"{len(findings)} finding(s)" if findings else "No finding detected by this model"]
    shown = _SUMMARY_LINES - len(lines) - 1
    for n, finding in enumerate(findings[:shown]):
        lines.append(f"{finding_caption(n, finding)}  ({len(finding.slices)} slice(s))")
    if len(findings) > shown:
        lines.append(f"... and {len(findings) - shown} more, see the report")
    pixels = render_summary(crops, lines, report.options.banner_text)
    keys = [series.image(key_slice(f).sop_instance_uid) for f in findings] or [series.first]
    unique_keys = list({str(k.SOPInstanceUID): k for k in keys}.values())
    return _secondary_capture(
        report, pixels, unique_keys, len(findings),
        "AI findings summary of the study, rendered from the key slices", None,
    )
