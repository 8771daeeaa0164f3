"""In-plane resampling to the model's pixel spacing, and its exact inverse to source pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True)
class PlaneMapping:
    """Source image grid <-> model grid; pixel centres at integer (x, y), model = resampled + padding.

    A model coordinate maps to the source by ``source = (model + 0.5) * scale - 0.5`` per axis,
    the convention of bilinear resampling with ``align_corners=False``; padding lies past the
    resampled image (bottom and right), so it shifts nothing.
    """

    source_shape: tuple[int, int]
    resampled_shape: tuple[int, int]
    padded_shape: tuple[int, int]
    source_spacing_mm: tuple[float, float]

    @property
    def scale_xy(self) -> NDArray[np.float64]:
        """Source pixels per model pixel, (x, y)."""
        return np.array(
            [self.source_shape[1] / self.resampled_shape[1], self.source_shape[0] / self.resampled_shape[0]]
        )

    @property
    def model_spacing_mm(self) -> tuple[float, float]:
        """The model grid's exact (row, column) spacing (the spec's, up to rounding of the size)."""
        sx, sy = self.scale_xy
        return (self.source_spacing_mm[0] * float(sy), self.source_spacing_mm[1] * float(sx))

    def to_source(self, xy: ArrayLike) -> NDArray[np.float64]:
        """Map (..., 2) model (x, y) to source pixel (x, y)."""
        return (np.asarray(xy, dtype=np.float64) + 0.5) * self.scale_xy - 0.5

    def to_model(self, xy: ArrayLike) -> NDArray[np.float64]:
        """Map (..., 2) source pixel (x, y) to model (x, y)."""
        return (np.asarray(xy, dtype=np.float64) + 0.5) / self.scale_xy - 0.5

    def box_to_source(self, boxes: ArrayLike) -> NDArray[np.float64]:
        """Map (..., 4) model boxes (x1, y1, x2, y2) to source pixel boxes."""
        b = np.asarray(boxes, dtype=np.float64)
        return np.concatenate([self.to_source(b[..., :2]), self.to_source(b[..., 2:])], axis=-1)

    def resample(self, planes: torch.Tensor) -> torch.Tensor:
        """Resample (P, rows, columns) source planes to (P, H, W) on the padded model grid (padding 0)."""
        h, w = self.resampled_shape
        shrinking = h < self.source_shape[0] or w < self.source_shape[1]
        out = F.interpolate(planes[None], size=(h, w), mode="bilinear", align_corners=False, antialias=shrinking)[0]
        ph, pw = self.padded_shape
        return F.pad(out, (0, pw - w, 0, ph - h))


def plane_mapping(
    source_shape: tuple[int, int], source_spacing_mm: tuple[float, float], spacing_mm: float, pad_multiple: int
) -> PlaneMapping:
    """The mapping that resamples a (rows, columns) image of (row, column) spacing to ``spacing_mm``."""
    resampled = tuple(
        max(1, round(n * s / spacing_mm)) for n, s in zip(source_shape, source_spacing_mm, strict=True)
    )
    padded = tuple(math.ceil(n / pad_multiple) * pad_multiple for n in resampled)
    return PlaneMapping(
        source_shape=source_shape,
        resampled_shape=resampled,  # type: ignore[arg-type]
        padded_shape=padded,  # type: ignore[arg-type]
        source_spacing_mm=source_spacing_mm,
    )
