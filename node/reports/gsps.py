"""The optional Grayscale Softcopy Presentation State: the findings' boxes as graphic annotations on the CT."""

from __future__ import annotations

import highdicom as hd

from node.reports.coordinates import box_polyline
from node.reports.captions import finding_caption, finding_name
from node.reports.prepared import PreparedReport
from node.reports.sources import copy_anatomy, no_identifier_warnings
from node.events import OutputKind

GSPS_SERIES_DESCRIPTION = "AI findings boxes (not for diagnosis)"


@no_identifier_warnings()
def build_gsps(report: PreparedReport) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A GSPS over the read series: every finding's per-slice box (closed polyline) and caption, model's window.

    Each box carries the tracking identifier and UID of the SR's measurement group of that image region. Raises ValueError for
    a run without findings: there is nothing to annotate.
    """
    series, options, run = report.series, report.options, report.run
    if not run.findings:
        raise ValueError("a presentation state needs at least one finding to annotate")
    layer = hd.pr.GraphicLayer(layer_name=options.gsps_layer_name, order=1, description=options.banner_text)
    annotations = []
    for n, finding in enumerate(run.findings):
        for k, box in enumerate(finding.slices):
            polyline = box_polyline(box.box_px)
            outline = hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=polyline,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                tracking_id=finding_name(n, finding),
                tracking_uid=report.region_uid(n, k),
            )
            caption = hd.pr.TextObject(
                text_value=f"{finding_caption(n, finding)} - {options.banner_text}",
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(float(polyline[0, 0]), float(polyline[0, 1])),
                anchor_point_visible=False,
            )
            annotations.append(
                hd.pr.GraphicAnnotation(
                    referenced_images=[series.image(box.sop_instance_uid)],
                    graphic_layer=layer,
                    graphic_objects=[outline],
                    text_objects=[caption],
                )
            )
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=series.headers(),
        **report.identity(OutputKind.GSPS),
        manufacturer_model_name=run.algorithm.name,
        software_versions=run.algorithm.version,
        device_serial_number=run.algorithm.weights_sha256[:16],
        content_label=options.gsps_layer_name.replace(" ", "_"),
        content_description=f"{run.algorithm.name} {run.algorithm.version} findings",
        graphic_annotations=annotations,
        graphic_layers=[layer],
        institution_name=options.institution_name,
        institutional_department_name=options.institutional_department_name,
        voi_lut_transformations=[
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=options.display_window()[0], window_width=options.display_window()[1]
            )
        ],
        series_description=GSPS_SERIES_DESCRIPTION,
    )
    copy_anatomy(series.first, gsps)
    report.stamp(gsps)
    return gsps
