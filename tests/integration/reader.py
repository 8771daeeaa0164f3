"""A radiologist's returns as the site's systems write them: the viewer's TID 1500 review, the RIS's ORU^R01.

Shared by the feedback tests and bench/site.py. :func:`ohif_review` writes what OHIF 3.13.2 saves ("Create SR",
see docs/deploy.md, "Radiologists' feedback"): an Enhanced SR, a person observer (``unknown^unknown`` unless a
reader is named), one measurement group per rectangle with a new Tracking UID and the Tracking Identifier
``Cornerstone3DTools@^0.1.0:RectangleROI``, its region a closed 5-point POLYLINE in image coordinates on its CT
image; a kept finding carries its Finding and Finding Site codes, a hand-drawn one a TEXT comment only.
:func:`oru_r01` writes a signed report as a RIS sends it, :func:`send_oru` sends it with python-hl7's MLLP client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import highdicom as hd
import hl7
import numpy as np
from hl7.mllp import open_hl7_connection
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
OHIF_RECTANGLE = "Cornerstone3DTools@^0.1.0:RectangleROI"
OHIF_OBSERVER = "unknown^unknown"
COMMENT = Code("121106", "DCM", "Comment")


@dataclass(frozen=True)
class Rectangle:
    """One rectangle a reader leaves on a CT image: its closed polyline (5 points, image coordinates), and either
    the finding codes of a kept measurement or the comment of a hand-drawn one."""

    sop_instance_uid: str
    polyline: np.ndarray
    finding: Code | hd.sr.CodedConcept | None = None
    finding_sites: Sequence[hd.sr.FindingSite] = field(default=())
    comment: str | None = None


def ohif_review(series: Sequence[Dataset], rectangles: Sequence[Rectangle], reader: str = OHIF_OBSERVER,
                series_number: int = 4700, instance_number: int = 1, when: datetime | None = None) -> hd.sr.EnhancedSR:
    """The reader's review of ``series`` (datasets of its CT images, pixels not needed), as OHIF saves it."""
    if not rectangles:
        raise ValueError("a review holds at least one rectangle: OHIF saves no report without a measurement")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series}
    unknown = sorted({r.sop_instance_uid for r in rectangles} - set(by_uid))
    if unknown:
        raise ValueError(f"rectangles on images not in the series: {', '.join(unknown)}")
    groups = []
    for rect in rectangles:
        polyline = np.asarray(rect.polyline, dtype=float).reshape(-1, 2)
        if len(polyline) != 5 or not np.allclose(polyline[0], polyline[-1]):
            raise ValueError("an OHIF rectangle is a closed POLYLINE of 5 points")
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=OHIF_RECTANGLE),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline,
                source_image=hd.sr.SourceImageForRegion.from_source_image(by_uid[rect.sop_instance_uid])),
            finding_type=rect.finding, finding_sites=list(rect.finding_sites) or None)
        if rect.comment:
            container = group[0]
            container.ContentSequence.append(hd.sr.TextContentItem(
                name=COMMENT, value=rect.comment, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        groups.append(group)
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Person,
                                     observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                                         name=reader))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_person_context=observer),
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    evidence = [by_uid[uid] for uid in dict.fromkeys(r.sop_instance_uid for r in rectangles)]
    sr = hd.sr.EnhancedSR(evidence=evidence, content=report, series_instance_uid=hd.UID(),
                          series_number=series_number, sop_instance_uid=hd.UID(), instance_number=instance_number,
                          manufacturer="OHIF", is_complete=True)
    at = when or datetime.now(timezone.utc)
    sr.ContentDate, sr.ContentTime = at.strftime("%Y%m%d"), at.strftime("%H%M%S")
    sr.SeriesDescription = "Research Derived Series"
    return sr


def oru_r01(control_id: str, study_instance_uid: str, lines: Sequence[str], patient_id: str = "",
            patient_name: str = "", accession: str = "", status: str = "F", when: datetime | None = None) -> str:
    """A signed CT report as an ORU^R01 (HL7 2.5): the Study Instance UID in ZDS-1, one OBX of type TX per line."""
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|RIS|SITE|CTNODE|SITE|{stamp}||ORU^R01^ORU_R01|{control_id}|P|2.5",
        f"PID|1||{patient_id}^^^SITE^MR||{patient_name}",
        f"OBR|1|PLC-{control_id}|{accession}|CTCHEST^CT chest||||||||||||||||||{stamp}|||{status}",
        f"ZDS|{study_instance_uid}^RIS^Application^DICOM",
        *(f"OBX|{n}|TX|REP^Report text||{_escaped(line)}||||||{status}" for n, line in enumerate(lines, 1)),
    ]
    return "\r".join(segments) + "\r"


def _escaped(text: str) -> str:
    """HL7 escapes of the delimiters a report line may hold."""
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
            .replace("~", "\\R\\"))


async def _send(host: str, port: int, message: str, timeout_s: float) -> hl7.Message:
    reader, writer = await open_hl7_connection(host, port, encoding="utf-8")
    try:
        writer.writemessage(hl7.parse(message))
        await writer.drain()
        return await asyncio.wait_for(reader.readmessage(), timeout_s)
    finally:
        writer.close()


def send_oru(port: int, message: str, host: str = "127.0.0.1", timeout_s: float = 60.0) -> tuple[str, str, str]:
    """Send one message over MLLP (python-hl7's client) and return its ACK's MSA-1, MSA-2 and MSA-3."""
    ack = asyncio.run(_send(host, port, message, timeout_s))
    msa = ack.segment("MSA")
    return str(msa(1)), str(msa(2)), str(msa(3)) if len(msa) > 3 else ""
