"""Synthetic lesions (ellipsoid or irregular, soft-edged) inserted into a CT volume at a known patient position."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from detector.io import StackGeometry, Volume

Shape = Literal["ellipsoid", "irregular"]
EDGE_MM = 1.0
"""Width of the linear partial-volume ramp at the lesion's border."""
_LOBES = 4


@dataclass(frozen=True)
class Lesion:
    """A lesion in patient space: centre (LPS mm), semi-axes (mm), orientation, density and shape.

    ``rotation`` (3x3, rows = the semi-axes' directions in LPS) turns the ellipsoid; an irregular
    lesion's border is the ellipsoid's scaled by ``1 + sum_k a_k cos(pi * w_k . d + phi_k)`` over
    directions d, with the lobe terms drawn from ``seed``.
    """

    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    hu: float
    shape: Shape = "ellipsoid"
    rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    seed: int = 0
    noise_hu: float = 6.0

    @property
    def diameter_mm(self) -> float:
        """Largest diameter of the underlying ellipsoid."""
        return 2.0 * max(self.radii_mm)

    def _lobes(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        rng = np.random.default_rng(self.seed)
        amplitude = rng.uniform(0.04, 0.12, _LOBES) if self.shape == "irregular" else np.zeros(_LOBES)
        return amplitude, rng.normal(0.0, 1.0, (_LOBES, 3)), rng.uniform(0, 2 * np.pi, _LOBES)

    def coverage(self, points_mm: NDArray[np.float64]) -> NDArray[np.float64]:
        """Fraction in [0, 1] of lesion at each (..., 3) LPS point: 1 inside, 0 outside, a ramp on the border."""
        axes = np.asarray(self.rotation, dtype=np.float64)
        radii = np.asarray(self.radii_mm, dtype=np.float64)
        local = (np.asarray(points_mm) - np.asarray(self.centre_mm)) @ axes.T
        u = local / radii
        rho = np.linalg.norm(u, axis=-1)
        direction = u / np.maximum(rho, 1e-9)[..., None]
        amplitude, waves, phases = self._lobes()
        border = 1.0 + np.cos(np.pi * direction @ waves.T + phases) @ amplitude
        distance_mm = (border - rho) * radii.min()
        return np.clip(0.5 + distance_mm / EDGE_MM, 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class InsertedLesion:
    """A lesion as inserted: per source slice z, its box (x1, y1, x2, y2) in source pixels (pixel centres at 0);
    ``mask`` marks its f >= 0.5 voxels within ``region`` (z, y, x slices of the volume)."""

    lesion: Lesion
    slice_boxes: dict[int, tuple[float, float, float, float]]
    region: tuple[slice, slice, slice]
    mask: NDArray[np.bool_]


def _region(geometry: StackGeometry, lesion: Lesion) -> tuple[slice, slice, slice]:
    reach = max(lesion.radii_mm) * 1.4 + EDGE_MM
    corners = np.array(np.meshgrid(*[[-reach, reach]] * 3, indexing="ij")).reshape(3, -1).T + lesion.centre_mm
    voxels = geometry.patient_to_voxel(corners)
    shape = np.asarray(geometry.shape)
    low = np.clip(np.floor(voxels.min(axis=0)).astype(int) - 1, 0, shape)
    high = np.clip(np.ceil(voxels.max(axis=0)).astype(int) + 2, low, shape)
    return slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2])


def insert_lesions(volume: Volume, lesions: list[Lesion]) -> tuple[Volume, list[InsertedLesion]]:
    """A copy of ``volume`` with each lesion blended in (HU = (1 - f) * background + f * lesion HU + noise).

    Returns the new volume and, per lesion, its f >= 0.5 voxels and their source-pixel box on each slice.
    """
    hu = volume.hu.astype(np.float32)
    geometry = volume.geometry
    inserted = []
    for lesion in lesions:
        zs, ys, xs = _region(geometry, lesion)
        grid = np.stack(
            np.meshgrid(np.arange(zs.start, zs.stop), np.arange(ys.start, ys.stop), np.arange(xs.start, xs.stop),
                        indexing="ij"),
            axis=-1,
        )
        f = lesion.coverage(geometry.voxel_to_patient(grid)).astype(np.float32)
        noise = np.random.default_rng(lesion.seed + 1).normal(0.0, lesion.noise_hu, f.shape).astype(np.float32)
        block = hu[zs, ys, xs]
        hu[zs, ys, xs] = (1 - f) * block + f * (lesion.hu + noise)
        mask = f >= 0.5
        boxes = {}
        for k in range(f.shape[0]):
            rows, columns = np.nonzero(mask[k])
            if rows.size:
                boxes[int(zs.start + k)] = (
                    float(xs.start + columns.min() - 0.5),
                    float(ys.start + rows.min() - 0.5),
                    float(xs.start + columns.max() + 0.5),
                    float(ys.start + rows.max() + 0.5),
                )
        inserted.append(InsertedLesion(lesion, boxes, (zs, ys, xs), mask))
    out = np.rint(hu).astype(np.int16) if volume.hu.dtype == np.int16 else hu
    return replace(volume, hu=out), inserted


def slab(volume: Volume, start: int, stop: int) -> Volume:
    """Slices ``start:stop`` (at least 2) of ``volume`` as a volume of their own, same patient geometry."""
    g = volume.geometry
    geometry = StackGeometry(
        row_direction=g.row_direction,
        column_direction=g.column_direction,
        pixel_spacing_mm=g.pixel_spacing_mm,
        positions_mm=g.positions_mm[start:stop],
        sop_instance_uids=g.sop_instance_uids[start:stop],
        shape=(stop - start, g.shape[1], g.shape[2]),
    )
    return replace(volume, hu=volume.hu[start:stop], geometry=geometry)
