"""The 2.5D context of a slice: neighbour planes along the slice normal, aligned to the slice's pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from detector.io import StackGeometry, Volume
from detector.preprocess.spec import InputSpec

_NO_SHIFT_PX = 1e-3


def plane_coordinates_mm(geometry: StackGeometry, index: int, spec: InputSpec) -> np.ndarray:
    """Where each plane of slice ``index``'s context lies along the normal, offsets -c..+c in order."""
    coords = geometry.slice_coordinates_mm
    offsets = np.arange(-spec.context_slices, spec.context_slices + 1)
    if spec.slice_step_mm is None:
        return coords[np.clip(index + offsets, 0, len(coords) - 1)]
    return coords[index] + offsets * spec.slice_step_mm


def _aligned(volume: Volume, source: int, target: int) -> torch.Tensor:
    """Slice ``source`` resampled so that its pixel (x, y) lies on the normal through ``target``'s (x, y).

    With gantry tilt the slices are offset in-plane from each other; this undoes that offset.
    """
    g = volume.geometry
    plane = torch.from_numpy(np.asarray(volume.hu[source], dtype=np.float32))
    delta = g.positions_mm[target] - g.positions_mm[source]
    shift_x = float(delta @ g.row_direction) / g.pixel_spacing_mm[1]
    shift_y = float(delta @ g.column_direction) / g.pixel_spacing_mm[0]
    if abs(shift_x) < _NO_SHIFT_PX and abs(shift_y) < _NO_SHIFT_PX:
        return plane
    rows, columns = plane.shape
    ys = (torch.arange(rows, dtype=torch.float32) + shift_y) * (2 / max(rows - 1, 1)) - 1
    xs = (torch.arange(columns, dtype=torch.float32) + shift_x) * (2 / max(columns - 1, 1)) - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    return F.grid_sample(plane[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]


def context_planes(volume: Volume, index: int, spec: InputSpec) -> torch.Tensor:
    """(planes, rows, columns) float32 HU on slice ``index``'s pixel grid; planes past the ends repeat the end slice."""
    coords = volume.geometry.slice_coordinates_mm
    planes = []
    for s in plane_coordinates_mm(volume.geometry, index, spec):
        k0 = int(np.clip(np.searchsorted(coords, s) - 1, 0, len(coords) - 2))
        t = float(np.clip((s - coords[k0]) / (coords[k0 + 1] - coords[k0]), 0.0, 1.0))
        if t == 0.0 or t == 1.0:
            planes.append(_aligned(volume, k0 + int(t), index))
        else:
            planes.append((1 - t) * _aligned(volume, k0, index) + t * _aligned(volume, k0 + 1, index))
    return torch.stack(planes)
