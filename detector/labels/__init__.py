"""Labels in every format a site has (PASCAL-VOC, LIDC-IDRI XML, DICOM SR TID 1500, DICOM SEG), read into one
lesion record in patient space; the readers and their dispatch."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from detector.io import InstanceHeader
from detector.labels.files import read_dicom, xml_root
from detector.labels.lesions import ImagePlane, LabelError, LesionRecord
from detector.labels.lidc import is_lidc, read_lidc
from detector.labels.seg import is_seg, read_seg
from detector.labels.tid1500 import is_measurement_report, read_sr
from detector.labels.voc import is_voc, read_voc

__all__ = ["LabelError", "label_files", "read_labels", "read_lidc", "read_seg", "read_sr", "read_voc",
           "xml_references"]

SEG_STORAGE = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
"""Segmentation and Label Map Segmentation Storage."""
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_UID = re.compile(rb"[0-9]+(?:\.[0-9]+){3,}")


def xml_references(path: Path, known: Mapping[str, object]) -> int:
    """How many of the ``known`` SOP Instance UIDs an XML label file names (by its file name or in its text)."""
    try:
        text = path.read_bytes()
    except OSError:
        return 0
    found = {m.decode() for m in _UID.findall(text)} | {path.stem}
    return sum(uid in known for uid in found)


def label_files(headers: Sequence[InstanceHeader], xml_paths: Sequence[Path]) -> list[Path]:
    """A study's label files: its DICOM SR and SEG instances, and the XML files given."""
    dicom = [h.path for h in headers if h.sop_class_uid in SEG_STORAGE or h.sop_class_uid.startswith(SR_PREFIX)]
    return sorted(dicom) + sorted(xml_paths)




def read_labels(paths: Sequence[Path], planes: Mapping[str, ImagePlane]) -> list[LesionRecord]:
    """Every lesion of the label files ``paths``, each file read by the reader of its format.

    PASCAL-VOC files (one per image) are read together so that a lesion's boxes on neighbouring
    images join; DICOM SRs other than measurement reports (e.g. dose reports) hold no lesions.
    """
    voc: list[Path] = []
    lesions: list[LesionRecord] = []
    for path in paths:
        if path.suffix.lower() == ".xml":
            root = xml_root(path)
            if is_voc(root):
                voc.append(path)
            elif is_lidc(root):
                lesions += read_lidc(path, planes)
            else:
                raise LabelError(f"{path}: XML root <{root.tag}> is neither PASCAL-VOC nor an LIDC-IDRI read")
            continue
        ds = read_dicom(path, stop_before_pixels=True)
        if is_seg(ds):
            lesions += read_seg(path, planes)
        elif is_measurement_report(ds):
            lesions += read_sr(path, planes)
    if voc:
        lesions += read_voc(voc, planes)
    return lesions
