"""Labelled lesions as one record in patient space, whatever label format they came from, and the hit test."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from detector.io import InstanceHeader

MIN_HIT_RADIUS_MM = 2.0
"""A predicted centre within this distance of a lesion's centre always hits it (DESIGN.md's protocol)."""
MIN_TARGET_DIAMETER_MM = 3.0
"""Lesions under this diameter are ignore regions: neither hits nor false positives (the LUNA16 convention)."""


class LabelError(ValueError):
    """A label file cannot be read; the message is one line naming the file and what is wrong."""


@dataclass(frozen=True, eq=False)
class ImagePlane:
    """Where one source image lies in patient space (LPS mm): enough to map its pixels to patient points."""

    sop_instance_uid: str
    position_mm: NDArray[np.float64]
    """ImagePositionPatient: the centre of pixel (column 0, row 0)."""
    row_direction: NDArray[np.float64]
    """Unit vector of increasing column index x."""
    column_direction: NDArray[np.float64]
    """Unit vector of increasing row index y."""
    pixel_spacing_mm: tuple[float, float]
    """(between rows, between columns), as DICOM PixelSpacing."""
    thickness_mm: float
    """How far along the normal a contour on this image reaches: half of it each side of the plane."""

    @property
    def normal(self) -> NDArray[np.float64]:
        n = np.cross(self.row_direction, self.column_direction)
        return n / np.linalg.norm(n)

    def to_patient(self, xy: NDArray[np.float64] | Iterable[Iterable[float]]) -> NDArray[np.float64]:
        """(K, 2) pixel index coordinates (x = column, y = row; first pixel's centre at 0, 0) -> (K, 3) LPS mm."""
        p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        dy, dx = self.pixel_spacing_mm
        return self.position_mm + p[:, :1] * dx * self.row_direction + p[:, 1:2] * dy * self.column_direction

    def to_pixels(self, points_mm: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(K, 3) LPS mm -> ((K, 2) pixel index coordinates in the plane, (K,) signed distances from it)."""
        d = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3) - self.position_mm
        dy, dx = self.pixel_spacing_mm
        xy = np.stack([d @ self.row_direction / dx, d @ self.column_direction / dy], axis=1)
        return xy, d @ self.normal


def planes_from_headers(headers: Iterable[InstanceHeader]) -> dict[str, ImagePlane]:
    """An :class:`ImagePlane` per single-frame image header with full geometry, by SOP Instance UID.

    The thickness is SliceThickness, else the distance to the nearest other slice of the same series.
    """
    usable = [h for h in headers if h.position and h.orientation and h.pixel_spacing and h.number_of_frames == 1]
    by_series: dict[str, list[InstanceHeader]] = {}
    for h in usable:
        by_series.setdefault(h.series_instance_uid, []).append(h)
    planes: dict[str, ImagePlane] = {}
    for members in by_series.values():
        for h in members:
            orientation = np.asarray(h.orientation, dtype=np.float64)
            row, column = orientation[:3] / np.linalg.norm(orientation[:3]), orientation[3:] / np.linalg.norm(orientation[3:])
            normal = np.cross(row, column)
            here = float(np.dot(h.position, normal))  # type: ignore[arg-type]
            gaps = [abs(float(np.dot(o.position, normal)) - here) for o in members if o is not h]  # type: ignore[arg-type]
            gaps = [g for g in gaps if g > 1e-3]
            thickness = h.slice_thickness_mm or (min(gaps) if gaps else 1.0)
            planes[h.sop_instance_uid] = ImagePlane(
                sop_instance_uid=h.sop_instance_uid,
                position_mm=np.asarray(h.position, dtype=np.float64),
                row_direction=row,
                column_direction=column,
                pixel_spacing_mm=h.pixel_spacing,  # type: ignore[arg-type]
                thickness_mm=float(thickness),
            )
    return planes


@dataclass(frozen=True, eq=False)
class LesionOutline:
    """A lesion's outline on one image: a closed polygon in that image's pixel index coordinates (x, y)."""

    plane: ImagePlane
    polygon_px: NDArray[np.float64]
    """(K, 2), K >= 3 for an area; a box is its 4 corners."""

    def contains(self, point_mm: NDArray[np.float64]) -> bool:
        """Whether a patient point lies inside the outline, within half the image's thickness of its plane."""
        xy, distance = self.plane.to_pixels(point_mm)
        if abs(float(distance[0])) > self.plane.thickness_mm / 2:
            return False
        return _inside_polygon(xy[0], self.polygon_px)


def _inside_polygon(point: NDArray[np.float64], polygon: NDArray[np.float64]) -> bool:
    """Even-odd rule over all edges at once; points on the boundary count as inside."""
    poly = np.asarray(polygon, dtype=np.float64)
    if len(poly) < 3:
        return False
    x, y = float(point[0]), float(point[1])
    (x1, y1), (x2, y2) = poly.T, np.roll(poly, -1, axis=0).T
    cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
    on_edge = ((np.minimum(x1, x2) <= x) & (x <= np.maximum(x1, x2)) & (np.minimum(y1, y2) <= y)
               & (y <= np.maximum(y1, y2)) & (np.abs(cross) <= 1e-9 * np.maximum(1.0, np.abs(x2 - x1) + np.abs(y2 - y1))))
    if on_edge.any():
        return True
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = x < x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    return bool(np.count_nonzero(straddles & crossing) % 2)


@dataclass(frozen=True, eq=False)
class LesionRecord:
    """One labelled lesion in patient space (LPS mm): the unit every label reader produces.

    ``ignore``: neither a hit nor a false positive when a prediction lands on it (a lesion under
    ``MIN_TARGET_DIAMETER_MM``, an LIDC mark of fewer than 3 readers, a non-nodule mark...).
    ``reason`` says why in words. ``outlines`` are its per-image contours, when the label has them.
    """

    centre_mm: tuple[float, float, float]
    diameter_mm: float
    label: str
    source: str
    """The label file (and the part of it) the lesion comes from."""
    ignore: bool = False
    reason: str = ""
    outlines: tuple[LesionOutline, ...] = ()
    readers: int | None = None
    """How many readers marked it, when the format says (LIDC)."""
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def hit_radius_mm(self) -> float:
        return max(self.diameter_mm / 2, MIN_HIT_RADIUS_MM)

    @cached_property
    def _reach_mm(self) -> float:
        """No outline reaches farther than this from the centre (a quick bound before polygon tests)."""
        if not self.outlines:
            return 0.0
        centre = np.asarray(self.centre_mm)
        return max(float(np.linalg.norm(o.plane.to_patient(o.polygon_px) - centre, axis=1).max()) + o.plane.thickness_mm
                   for o in self.outlines)

    def hit_by(self, point_mm: Iterable[float]) -> bool:
        """A predicted centre hits the lesion within its radius (at least 2 mm) or inside any of its outlines."""
        p = np.asarray(list(point_mm), dtype=np.float64)
        distance = float(np.linalg.norm(p - np.asarray(self.centre_mm)))
        if distance <= self.hit_radius_mm:
            return True
        return distance <= self._reach_mm and any(outline.contains(p) for outline in self.outlines)

    def summary(self) -> dict[str, object]:
        """The record as JSON-ready data (outlines summarised by how many images they span)."""
        return {
            "centre_mm": [round(v, 2) for v in self.centre_mm],
            "diameter_mm": round(self.diameter_mm, 2),
            "label": self.label,
            "source": self.source,
            "ignore": self.ignore,
            "reason": self.reason,
            "images": len({o.plane.sop_instance_uid for o in self.outlines}),
            "readers": self.readers,
        }


def record_from_outlines(
    outlines: list[LesionOutline], label: str, source: str, *, readers: int | None = None, ignore_reason: str = ""
) -> LesionRecord:
    """A lesion from its per-image outlines: centre of the outlined area, diameter = its largest extent.

    The diameter is the larger of the widest in-plane extent and the span of the outlined images along
    the normal; lesions under ``MIN_TARGET_DIAMETER_MM`` become ignore regions.
    """
    if not outlines:
        raise ValueError("a lesion needs at least one outline")
    points = np.concatenate([o.plane.to_patient(o.polygon_px) for o in outlines])
    centres = np.stack([o.plane.to_patient(o.polygon_px).mean(axis=0) for o in outlines])
    areas = np.array([max(_area(o.polygon_px) * np.prod(o.plane.pixel_spacing_mm), 1e-6) for o in outlines])
    centre = (centres * areas[:, None]).sum(axis=0) / areas.sum()
    in_plane = max(float(np.ptp(o.plane.to_patient(o.polygon_px) @ d))
                   for o in outlines for d in (o.plane.row_direction, o.plane.column_direction))
    normal = outlines[0].plane.normal
    along = float(np.ptp(points @ normal))
    diameter = max(in_plane, along)
    reason = ignore_reason
    if not reason and diameter < MIN_TARGET_DIAMETER_MM:
        reason = f"under {MIN_TARGET_DIAMETER_MM:g} mm ({diameter:.1f} mm)"
    return LesionRecord(
        centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
        diameter_mm=diameter,
        label=label,
        source=source,
        ignore=bool(reason),
        reason=reason,
        outlines=tuple(outlines),
        readers=readers,
    )


def _area(polygon: NDArray[np.float64]) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def box_polygon(x1: float, y1: float, x2: float, y2: float) -> NDArray[np.float64]:
    """The 4 corners of a box given by its pixel edges (index coordinates)."""
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)
