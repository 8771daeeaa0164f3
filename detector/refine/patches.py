"""3D patches around candidates: a cube in the series' own axes, resampled to a fixed voxel grid, HU-windowed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from detector.findings import Finding
from detector.io import Volume
from detector.preprocess.spec import HUWindow

AIR_HU = -1024
"""What lies outside the scanned volume."""


@dataclass(frozen=True)
class PatchSpec:
    """A cube of ``max(side_mm, scale * largest in-plane extent)`` mm around the candidate's centre, sampled on
    ``voxels`` points per axis (row direction, column direction, slice normal), through each HU window."""

    windows: tuple[HUWindow, ...]
    side_mm: float = 48.0
    voxels: int = 24
    scale: float = 1.5

    def __post_init__(self) -> None:
        if not self.windows:
            raise ValueError("a patch needs at least one HU window")
        if self.side_mm <= 0 or self.voxels < 8 or self.scale <= 0:
            raise ValueError(f"patch side_mm > 0, voxels >= 8 and scale > 0 are required, got {self}")

    def side_of(self, size_mm: Sequence[float]) -> float:
        return max(self.side_mm, self.scale * max(size_mm[0], size_mm[1]))


def _grid(volume: Volume, centre_mm: Sequence[float], side_mm: float, voxels: int) -> np.ndarray:
    """(voxels, voxels, voxels, 3) fractional voxel indices (z, y, x) of the cube's sample points, ordered
    (normal, column direction, row direction) like the volume."""
    g = volume.geometry
    steps = np.linspace(-side_mm / 2, side_mm / 2, voxels)
    w, v, u = np.meshgrid(steps, steps, steps, indexing="ij")
    points = (np.asarray(centre_mm, dtype=np.float64) + w[..., None] * g.normal
              + v[..., None] * g.column_direction + u[..., None] * g.row_direction)
    return g.patient_to_voxel(points)


def extract_patch(volume: Volume, centre_mm: Sequence[float], side_mm: float, spec: PatchSpec) -> torch.Tensor:
    """One (windows, voxels, voxels, voxels) float patch in [0, 1]; outside the volume reads as air."""
    zyx = _grid(volume, centre_mm, side_mm, spec.voxels)
    low = np.floor(zyx.reshape(-1, 3).min(axis=0)).astype(int)
    high = np.ceil(zyx.reshape(-1, 3).max(axis=0)).astype(int) + 1
    shape = np.asarray(volume.hu.shape)
    lo_in, hi_in = np.clip(low, 0, shape), np.clip(high, 0, shape)
    crop = np.full(tuple(high - low), AIR_HU, dtype=np.float32)
    if np.all(hi_in > lo_in):
        inside = tuple(slice(a, b) for a, b in zip(lo_in, hi_in, strict=True))
        target = tuple(slice(a - o, b - o) for a, b, o in zip(lo_in, hi_in, low, strict=True))
        crop[target] = volume.hu[inside]
    hu = torch.from_numpy(crop)
    channels = torch.stack([((hu - (w.centre - w.width / 2)) / w.width).clamp_(0, 1) for w in spec.windows])
    extent = np.maximum(np.asarray(crop.shape) - 1, 1)
    normalised = 2 * (zyx - low) / extent - 1  # [-1, 1] over the crop, per axis (z, y, x)
    grid = torch.from_numpy(normalised[..., ::-1].astype(np.float32).copy())  # grid_sample wants (x, y, z)
    sampled = F.grid_sample(channels[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)
    return sampled[0]


def extract_patches(volume: Volume, candidates: Sequence[Finding], spec: PatchSpec) -> torch.Tensor:
    """(N, windows, voxels, voxels, voxels) patches around each candidate's centre."""
    if not candidates:
        return torch.zeros((0, len(spec.windows), spec.voxels, spec.voxels, spec.voxels))
    return torch.stack([extract_patch(volume, f.centre_mm, spec.side_of(f.size_mm), spec) for f in candidates])


def candidate_features(candidates: Sequence[Finding]) -> torch.Tensor:
    """(N, 5) what the first stage said: its score's logit, log extents (mm) and log slice count."""
    rows = [
        [float(np.log(max(f.score, 1e-4) / max(1 - f.score, 1e-4))),
         *(float(np.log1p(s)) for s in f.size_mm), float(np.log(max(1, len(f.slices))))]
        for f in candidates
    ]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
