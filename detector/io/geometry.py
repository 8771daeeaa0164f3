"""Patient geometry of a stack of CT slices: voxel <-> patient (LPS mm) <-> source pixel.

Choices, and why:
- Gantry tilt is kept, not resampled: the stack axis is the line through the slices'
  ImagePositionPatient, which may be oblique to the slice normal, so the affine is sheared.
  Every voxel then stays a pixel of a source image, which the reports reference exactly.
- Uneven slice gaps are kept, not resampled: ``positions_mm`` holds each slice's own
  ImagePositionPatient and ``voxel_to_patient`` interpolates between neighbouring slices, so it is
  exact at every slice. ``affine`` is the least-squares uniform stack (exact when gaps are even,
  ``affine_error_mm`` says how far off it is otherwise).

Indices are in array order ``(z, y, x)`` = (slice, row, column) of ``hu[z, y, x]``; pixel
centres sit at integer indices (a DICOM SCOORD puts the first pixel's centre at 0.5, 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from detector.io.errors import GeometryError

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class PixelLocation:
    """A point on one source image: its SOP Instance UID, pixel column ``x`` and row ``y``."""

    slice_index: int
    sop_instance_uid: str
    x: float
    y: float
    distance_mm: float
    """Signed distance of the point from the slice plane, along the slice normal."""


@dataclass(frozen=True, eq=False)
class StackGeometry:
    """Where each voxel of a slice stack lies in patient space; slices ordered along the normal."""

    row_direction: FloatArray
    """Unit vector along increasing column index x (ImageOrientationPatient[0:3])."""
    column_direction: FloatArray
    """Unit vector along increasing row index y (ImageOrientationPatient[3:6])."""
    pixel_spacing_mm: tuple[float, float]
    """(between rows, between columns), as in DICOM PixelSpacing."""
    positions_mm: FloatArray
    """(N, 3) ImagePositionPatient of each slice, in stack order."""
    sop_instance_uids: tuple[str, ...]
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        n = self.shape[0]
        if self.positions_mm.shape != (n, 3) or len(self.sop_instance_uids) != n:
            raise GeometryError(f"geometry of {n} slices needs {n} positions and {n} SOP Instance UIDs")
        if n < 2:
            raise GeometryError("a slice stack needs at least 2 slices to define its geometry")
        gaps = np.diff(self.slice_coordinates_mm)
        if np.any(gaps <= 1e-3):
            k = int(np.argmin(gaps))
            raise GeometryError(
                f"slices {self.sop_instance_uids[k]} and {self.sop_instance_uids[k + 1]} are not ordered "
                f"along the slice normal (gap {gaps[k]:.4f} mm)"
            )

    @property
    def normal(self) -> FloatArray:
        """Unit slice normal, row_direction x column_direction."""
        n = np.cross(self.row_direction, self.column_direction)
        return n / np.linalg.norm(n)

    @property
    def slice_coordinates_mm(self) -> FloatArray:
        """Each slice's position along the normal (strictly increasing)."""
        return self.positions_mm @ self.normal

    @property
    def slice_gaps_mm(self) -> FloatArray:
        """Distances between consecutive slice planes along the normal, (N - 1,)."""
        return np.diff(self.slice_coordinates_mm)

    @property
    def tilt_deg(self) -> float:
        """Angle between the stack axis and the slice normal (the gantry tilt; 0 for a plain stack)."""
        axis = self.positions_mm[-1] - self.positions_mm[0]
        cos = abs(float(axis @ self.normal)) / float(np.linalg.norm(axis))
        return float(np.degrees(np.arccos(min(cos, 1.0))))

    @property
    def affine(self) -> FloatArray:
        """4x4 map from (z, y, x, 1) to LPS mm: least-squares stack axis, exact in-plane axes."""
        k = np.arange(self.shape[0], dtype=np.float64)
        design = np.stack([k, np.ones_like(k)], axis=1)
        (step, origin), *_ = np.linalg.lstsq(design, self.positions_mm, rcond=None)
        dy, dx = self.pixel_spacing_mm
        out = np.eye(4)
        out[:3, 0] = step
        out[:3, 1] = self.column_direction * dy
        out[:3, 2] = self.row_direction * dx
        out[:3, 3] = origin
        return out

    @property
    def affine_error_mm(self) -> float:
        """Largest distance between a slice's true position and the one ``affine`` implies."""
        k = np.arange(self.shape[0], dtype=np.float64)
        a = self.affine
        implied = k[:, None] * a[:3, 0] + a[:3, 3]
        return float(np.max(np.linalg.norm(implied - self.positions_mm, axis=1)))

    def _origin_at(self, z: FloatArray) -> FloatArray:
        """Origin of the (possibly fractional) slice z, linear between neighbours, extrapolated at the ends."""
        k0 = np.clip(np.floor(z), 0, self.shape[0] - 2).astype(np.int64)
        t = (z - k0)[..., None]
        p = self.positions_mm
        return p[k0] + t * (p[k0 + 1] - p[k0])

    def voxel_to_patient(self, zyx: ArrayLike) -> FloatArray:
        """Map (..., 3) voxel indices (z, y, x) to (..., 3) LPS mm; exact at every slice."""
        v = np.asarray(zyx, dtype=np.float64)
        dy, dx = self.pixel_spacing_mm
        return (
            self._origin_at(v[..., 0])
            + v[..., 1:2] * dy * self.column_direction
            + v[..., 2:3] * dx * self.row_direction
        )

    def patient_to_voxel(self, point_mm: ArrayLike) -> FloatArray:
        """Map (..., 3) LPS mm to (..., 3) fractional voxel indices (z, y, x); inverse of ``voxel_to_patient``."""
        p = np.asarray(point_mm, dtype=np.float64)
        coords = self.slice_coordinates_mm
        s = p @ self.normal
        k0 = np.clip(np.searchsorted(coords, s) - 1, 0, self.shape[0] - 2)
        z = k0 + (s - coords[k0]) / (coords[k0 + 1] - coords[k0])
        d = p - self._origin_at(z)
        dy, dx = self.pixel_spacing_mm
        return np.stack([z, d @ self.column_direction / dy, d @ self.row_direction / dx], axis=-1)

    def locate(self, point_mm: ArrayLike) -> PixelLocation:
        """The source image nearest to a patient point, and the point's pixel (x, y) on it."""
        p = np.asarray(point_mm, dtype=np.float64).reshape(3)
        distances = p @ self.normal - self.slice_coordinates_mm
        k = int(np.argmin(np.abs(distances)))
        d = p - self.positions_mm[k]
        dy, dx = self.pixel_spacing_mm
        return PixelLocation(
            slice_index=k,
            sop_instance_uid=self.sop_instance_uids[k],
            x=float(d @ self.row_direction / dx),
            y=float(d @ self.column_direction / dy),
            distance_mm=float(distances[k]),
        )
