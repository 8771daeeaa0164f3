"""LIDC-IDRI reads (LidcReadMessage XML) as lesions: nodules of 3 or more readers are targets, other marks ignored."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from detector.labels.files import xml_root
from detector.labels.lesions import (
    MIN_TARGET_DIAMETER_MM,
    ImagePlane,
    LabelError,
    LesionOutline,
    LesionRecord,
    record_from_outlines,
)

TARGET_READERS = 3
"""A nodule >= 3 mm marked by this many readers is a target (the LUNA16 convention); by fewer, an ignore region."""
SMALL_NODULE_DIAMETER_MM = 3.0
"""Size given to a nodule < 3 mm, which LIDC marks by its centre alone."""
NON_NODULE_DIAMETER_MM = 6.0
"""Size given to a non-nodule mark. LIDC asks for non-nodule findings >= 3 mm (scars, vessel junctions...) and
takes only their centre; 6 mm covers such a finding around the point, so a detection on its edge is ignored
rather than counted as a false positive."""
MERGE_DISTANCE_MM = 4.0
"""Marks of two readers with centres this close are one finding even when both are points: readers click a few
pixels and up to a slice apart on the same small nodule (distinct marks in the LIDC files lie > 10 mm apart)."""
Z_TOLERANCE_MM = 0.1
"""How close imageZposition must be to an image's position along its normal when its SOP UID is unknown."""

NODULE, SMALL_NODULE, NON_NODULE = "nodule", "nodule < 3 mm", "non-nodule"


@dataclass(frozen=True, eq=False)
class _Mark:
    """One reader's mark of one finding."""

    kind: str
    reader: int
    ident: str
    centre: NDArray[np.float64]
    diameter_mm: float
    outlines: tuple[LesionOutline, ...]


def is_lidc(root: ET.Element) -> bool:
    """Whether a parsed XML document is an LIDC read message (any namespace variant)."""
    return _local(root.tag) in ("LidcReadMessage", "IdriReadMessage") or bool(_children(root, "readingSession"))


def read_lidc(path: Path, planes: Mapping[str, ImagePlane]) -> list[LesionRecord]:
    """The lesions of an LIDC read file, one readingSession per reader, marks of different readers clustered.

    A cluster of >= 3 mm nodule marks of at least ``TARGET_READERS`` readers is a target; its outlines are
    the union of the readers' contours, its centre the mean of the readers' centres and its diameter the mean
    of their diameters (the LIDC/LUNA16 convention), each reader's from :func:`record_from_outlines`. Clusters
    of fewer readers, nodules < 3 mm and non-nodule marks are ignore regions.
    """
    root = xml_root(path)
    sessions = [el for el in root.iter() if _local(el.tag) == "readingSession"]
    if not sessions:
        raise LabelError(f"{path}: no readingSession, not an LIDC read")
    marks = [mark for reader, session in enumerate(sessions) for mark in _marks(path, planes, reader, session)]
    return [
        _record(path, kind, cluster, len(sessions))
        for kind in (NODULE, SMALL_NODULE, NON_NODULE)
        for cluster in _clusters([m for m in marks if m.kind == kind])
    ]


def _marks(path: Path, planes: Mapping[str, ImagePlane], reader: int, session: ET.Element) -> list[_Mark]:
    marks = []
    for nodule in _children(session, "unblindedReadNodule"):
        ident = _text(nodule, "noduleID") or "?"
        where = f"reader {reader + 1} nodule {ident!r}"
        outlines = []
        for roi in _children(nodule, "roi"):
            if (_text(roi, "inclusion") or "TRUE").upper() == "FALSE":
                continue
            edges = _children(roi, "edgeMap")
            if not edges:
                raise LabelError(f"{path}: {where} has a roi without coordinates")
            polygon = np.array([_point(path, edge, where) for edge in edges])
            outlines.append(LesionOutline(_plane(path, planes, roi, where), polygon))
        if not outlines:
            raise LabelError(f"{path}: {where} has no included roi")
        if all(len(o.polygon_px) == 1 for o in outlines):
            centre = np.concatenate([o.plane.to_patient(o.polygon_px) for o in outlines]).mean(axis=0)
            marks.append(_Mark(SMALL_NODULE, reader, ident, centre, SMALL_NODULE_DIAMETER_MM, tuple(outlines)))
        else:
            own = record_from_outlines(outlines, NODULE, path.name)
            marks.append(_Mark(NODULE, reader, ident, np.array(own.centre_mm), own.diameter_mm, tuple(outlines)))
    for mark in _children(session, "nonNodule"):
        ident = _text(mark, "nonNoduleID") or "?"
        where = f"reader {reader + 1} non-nodule {ident!r}"
        locus = _children(mark, "locus")
        if not locus:
            raise LabelError(f"{path}: {where} has no locus")
        outline = LesionOutline(_plane(path, planes, mark, where), np.array([_point(path, locus[0], where)]))
        centre = outline.plane.to_patient(outline.polygon_px)[0]
        marks.append(_Mark(NON_NODULE, reader, ident, centre, NON_NODULE_DIAMETER_MM, (outline,)))
    return marks


def _clusters(marks: list[_Mark]) -> list[list[_Mark]]:
    """Overlapping marks of different readers, closest pairs joined first, each reader at most once per cluster."""
    pairs = sorted(
        (float(np.linalg.norm(marks[i].centre - marks[j].centre)), i, j)
        for i, j in combinations(range(len(marks)), 2)
        if marks[i].reader != marks[j].reader and _overlap(marks[i], marks[j])
    )
    cluster = list(range(len(marks)))
    members = {k: [k] for k in range(len(marks))}
    for _, i, j in pairs:
        a, b = cluster[i], cluster[j]
        if a == b or {marks[k].reader for k in members[a]} & {marks[k].reader for k in members[b]}:
            continue
        for k in members.pop(b):
            cluster[k] = a
            members[a].append(k)
    return [[marks[k] for k in sorted(ks)] for _, ks in sorted(members.items())]


def _overlap(a: _Mark, b: _Mark) -> bool:
    """Centres within the larger radius (at least ``MERGE_DISTANCE_MM``), or one centre inside the other's outlines."""
    if float(np.linalg.norm(a.centre - b.centre)) <= max(a.diameter_mm / 2, b.diameter_mm / 2, MERGE_DISTANCE_MM):
        return True
    return any(o.contains(b.centre) for o in a.outlines) or any(o.contains(a.centre) for o in b.outlines)


def _record(path: Path, kind: str, cluster: list[_Mark], readers: int) -> LesionRecord:
    count = len(cluster)
    centre = np.mean([m.centre for m in cluster], axis=0)
    diameter = float(np.mean([m.diameter_mm for m in cluster]))
    marked = f"marked by {count} of {readers} readers"
    if kind != NODULE:
        reason = f"{kind}, {marked}"
    elif count < TARGET_READERS:
        reason = f"nodule >= 3 mm {marked} ({TARGET_READERS} needed)"
    elif diameter < MIN_TARGET_DIAMETER_MM:
        reason = f"under {MIN_TARGET_DIAMETER_MM:g} mm ({diameter:.1f} mm)"
    else:
        reason = ""
    return LesionRecord(
        centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
        diameter_mm=diameter,
        label=NON_NODULE if kind == NON_NODULE else NODULE,
        source=f"{path.name}: " + ", ".join(f"reader {m.reader + 1} {m.ident}" for m in cluster),
        ignore=bool(reason),
        reason=reason,
        outlines=tuple(o for m in cluster for o in m.outlines),
        readers=count,
    )


def _plane(path: Path, planes: Mapping[str, ImagePlane], element: ET.Element, where: str) -> ImagePlane:
    """The image a roi or mark lies on: by imageSOP_UID, else by imageZposition along the images' normal."""
    uid = _text(element, "imageSOP_UID")
    if uid in planes:
        return planes[uid]
    try:
        z = float(_text(element, "imageZposition") or "nan")
    except ValueError:
        z = float("nan")
    matches = [p for p in planes.values() if abs(float(p.position_mm @ p.normal) - z) <= Z_TOLERANCE_MM]
    if len(matches) == 1:
        return matches[0]
    found = f"{len(matches)} images" if matches else "no image"
    raise LabelError(f"{path}: {where} is on image {uid or '(no imageSOP_UID)'} not in the study, "
                     f"and its imageZposition {z:g} matches {found}")


def _point(path: Path, element: ET.Element, where: str) -> tuple[float, float]:
    try:
        x, y = float(_text(element, "xCoord") or "nan"), float(_text(element, "yCoord") or "nan")
    except ValueError:
        x = y = float("nan")
    if not (np.isfinite(x) and np.isfinite(y)):
        raise LabelError(f"{path}: {where} has a point without a numeric xCoord and yCoord")
    return x, y




def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element, name: str) -> str | None:
    found = _children(element, name)
    return (found[0].text or "").strip() if found else None
