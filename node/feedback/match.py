"""Matching a reader's measurement groups to one run's findings: confirmed, rejected, edited, and the missed.

A reader's group belongs to our finding when it carries one of the finding's Tracking UIDs (the viewer kept
it), else when it is drawn on one of the finding's slices overlapping its box, else when its outline's centre
lies within the finding's 3D extent (drawn on a neighbouring slice). A finding with no group is rejected; one
whose groups all keep its boxes (within a pixel) is confirmed, else edited. Groups of no finding are missed
lesions, those within a lesion's reach of each other joined into one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from detector.labels.lesions import ImagePlane, LesionOutline, record_from_outlines
from detector.labels.tid1500 import SrGroup, SrRegion, region_polygon
from node.events import FeedbackVerdict

SAME_BOX_PX = 1.0
"""A reader's box whose corners are all within this of ours (pixels) is our box, kept."""
EXTENT_MARGIN_MM = 2.0
"""How far beyond a finding's 3D extent a reader's outline centre may lie and still be that finding."""
MATCH_BY_UID = "tracking uid"
MATCH_BY_GEOMETRY = "geometry"


@dataclass(frozen=True)
class OurFinding:
    """What matching needs of one of a run's findings: its Tracking UIDs, per-slice boxes and 3D extent."""

    tracking_uids: frozenset[str]
    boxes_px: Mapping[str, tuple[float, float, float, float]]
    """SOP Instance UID -> (x1, y1, x2, y2) in pixel index coordinates."""
    centre_mm: tuple[float, float, float]
    size_mm: tuple[float, float, float]


@dataclass(frozen=True)
class Verdict:
    """A reader's verdict on one finding (``finding_index``), or a lesion the run missed (index None)."""

    verdict: FeedbackVerdict
    finding_index: int | None
    matched_by: str | None = None
    label: str | None = None
    centre_mm: tuple[float, float, float] | None = None
    diameter_mm: float | None = None
    regions: tuple[SrRegion, ...] = field(default_factory=tuple)


def match_review(findings: Sequence[OurFinding], groups: Sequence[SrGroup],
                 planes: Mapping[str, ImagePlane]) -> list[Verdict]:
    """One verdict per finding (in order), then one per missed lesion."""
    mine: dict[int, list[tuple[SrGroup, str]]] = {}
    unmatched: list[SrGroup] = []
    for group in groups:
        if not group.regions and not group.points_mm:
            continue  # no geometry: a finding-level group (certainty) or "no abnormality"
        owner = _owner(findings, group, planes)
        if owner is None:
            unmatched.append(group)
        else:
            mine.setdefault(owner[0], []).append((group, owner[1]))
    verdicts = [_verdict(n, finding, mine.get(n, []), planes) for n, finding in enumerate(findings)]
    return verdicts + [_missed(cluster, planes) for cluster in _clusters(unmatched, planes)]


def _owner(findings: Sequence[OurFinding], group: SrGroup,
           planes: Mapping[str, ImagePlane]) -> tuple[int, str] | None:
    if group.tracking_uid is not None:
        for n, finding in enumerate(findings):
            if group.tracking_uid in finding.tracking_uids:
                return n, MATCH_BY_UID
    for n, finding in enumerate(findings):
        if any(_overlaps(finding.boxes_px[r.sop_instance_uid], r) for r in group.regions
               if r.sop_instance_uid in finding.boxes_px):
            return n, MATCH_BY_GEOMETRY
    centre = _centre_mm(group, planes)
    if centre is not None:
        for n, finding in enumerate(findings):
            reach = np.asarray(finding.size_mm) / 2 + EXTENT_MARGIN_MM
            if np.all(np.abs(centre - np.asarray(finding.centre_mm)) <= reach):
                return n, MATCH_BY_GEOMETRY
    return None


def _bounds(region: SrRegion) -> NDArray[np.float64]:
    polygon = region_polygon(region)
    return np.concatenate([polygon.min(axis=0), polygon.max(axis=0)])


def _overlaps(box: tuple[float, float, float, float], region: SrRegion) -> bool:
    x1, y1, x2, y2 = _bounds(region)
    return min(box[2], x2) > max(box[0], x1) and min(box[3], y2) > max(box[1], y1)


def _same_box(box: tuple[float, float, float, float], region: SrRegion) -> bool:
    return bool(np.all(np.abs(_bounds(region) - np.asarray(box)) <= SAME_BOX_PX))


def _outlines(groups: Sequence[SrGroup], planes: Mapping[str, ImagePlane]) -> list[LesionOutline]:
    return [LesionOutline(planes[r.sop_instance_uid], region_polygon(r))
            for g in groups for r in g.regions if r.sop_instance_uid in planes and r.graphic_type != "POINT"]


def _centre_mm(group: SrGroup, planes: Mapping[str, ImagePlane]) -> NDArray[np.float64] | None:
    points = [planes[r.sop_instance_uid].to_patient(region_polygon(r)).mean(axis=0)
              for r in group.regions if r.sop_instance_uid in planes]
    points += [np.asarray(p) for p in group.points_mm]
    return np.mean(points, axis=0) if points else None


def _verdict(n: int, finding: OurFinding, groups: list[tuple[SrGroup, str]],
             planes: Mapping[str, ImagePlane]) -> Verdict:
    if not groups:
        return Verdict(FeedbackVerdict.REJECTED, n)
    regions = tuple(r for g, _ in groups for r in g.regions)
    kept = all(r.sop_instance_uid in finding.boxes_px and _same_box(finding.boxes_px[r.sop_instance_uid], r)
               for r in regions) and not any(g.points_mm for g, _ in groups)
    by = MATCH_BY_UID if any(how == MATCH_BY_UID for _, how in groups) else MATCH_BY_GEOMETRY
    label = next((g.finding for g, _ in groups if g.finding), None)
    if kept:
        return Verdict(FeedbackVerdict.CONFIRMED, n, by, label)
    centre, diameter = _size([g for g, _ in groups], planes)
    return Verdict(FeedbackVerdict.EDITED, n, by, label, centre, diameter, regions)


def _size(groups: Sequence[SrGroup], planes: Mapping[str, ImagePlane]
          ) -> tuple[tuple[float, float, float] | None, float | None]:
    """The reader's lesion centre and diameter from their outlines (else their points)."""
    outlines = _outlines(groups, planes)
    if outlines:
        try:
            record = record_from_outlines(outlines, "lesion", "reader")
            return record.centre_mm, record.diameter_mm
        except ValueError:  # a degenerate outline: fall back on the points
            pass
    points = [c for g in groups if (c := _centre_mm(g, planes)) is not None]
    if not points:
        return None, None
    centre = np.mean(points, axis=0)
    return (float(centre[0]), float(centre[1]), float(centre[2])), None


def _clusters(groups: Sequence[SrGroup], planes: Mapping[str, ImagePlane]) -> list[list[SrGroup]]:
    """Unmatched groups joined when one's centre lies within the other's reach (one lesion on several slices)."""
    clusters: list[list[SrGroup]] = []
    for group in groups:
        centre = _centre_mm(group, planes)
        home = None
        if centre is not None:
            for cluster in clusters:
                c, d = _size(cluster, planes)
                if c is not None and np.linalg.norm(centre - np.asarray(c)) <= max((d or 0.0) / 2, 0.0) + 5.0:
                    home = cluster
                    break
        if home is None:
            clusters.append([group])
        else:
            home.append(group)
    return clusters


def _missed(cluster: Sequence[SrGroup], planes: Mapping[str, ImagePlane]) -> Verdict:
    centre, diameter = _size(cluster, planes)
    label = next((g.finding for g in cluster if g.finding), None)
    return Verdict(FeedbackVerdict.MISSED, None, None, label, centre, diameter,
                   tuple(r for g in cluster for r in g.regions))
